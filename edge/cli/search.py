"""``storelens search --image PATH --text QUERY`` (or ``--video CLIP``): ranked products as a table or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge.catalog.ranking import DEFAULT_K
from edge.cli.common import add_common, open_store
from edge.core.errors import InputError
from edge.models.preprocess import read_image


def register(sub: Any) -> None:
    p = sub.add_parser(
        "search", help="find products by photo, by text, or both",
        description="Rank catalog products for a photo (image index, a product's several photos aggregated), a "
        "text query (hybrid: FTS5 BM25 + text embeddings, reciprocal rank fusion), or both fused. Shows whether "
        "the top hit clears the catalog's unknown-product thresholds.")
    p.add_argument("--image", type=Path, default=None, metavar="PATH", help="query photo")
    p.add_argument("--text", default=None, metavar="QUERY", help="query words")
    p.add_argument("--video", type=Path, default=None, metavar="CLIP",
                   help="a short clip (phone or tray recording): one answer for the item it shows, its views pooled "
                   "as at the kiosk, with the candidates a shopper would pick from")
    p.add_argument("-k", type=int, default=DEFAULT_K,
                   help=f"how many products (clamped to the catalog size; default {DEFAULT_K})")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.video is not None:
        if args.image is not None or args.text:
            raise InputError("--video searches on its own", hint="drop --image/--text, or search them separately")
        from edge.cli.search_video import run_video

        return run_video(args)
    if args.image is None and not args.text:
        raise InputError("nothing to search for", hint="pass --image PATH, --text QUERY, --video CLIP or both")
    if args.k < 1:
        raise InputError(f"-k must be at least 1, got {args.k}", hint="e.g. -k 5")
    image = read_image(args.image) if args.image is not None else None
    store = open_store(args, image=image is not None, text=bool(args.text))
    try:
        ranked = store.search(image=image, text=args.text, k=args.k)
        thresholds = store.thresholds
        version = store.catalog_version
    finally:
        store.close()
    known = thresholds.accepts([r.candidate() for r in ranked]) if image is not None and args.text is None else None
    if args.json:
        print(json.dumps({"catalog_version": version, "known": known,
                          "thresholds": {"score": thresholds.score, "margin": thresholds.margin,
                                         "source": thresholds.source},
                          "results": [r.to_dict() for r in ranked]}, indent=2, ensure_ascii=False))
        return 0
    if not ranked:
        print("no matching product")
        return 0
    print(f"{'#':>2}  {'score':>7}  {'sku':<24} name")
    for i, r in enumerate(ranked, start=1):
        parts = " ".join(f"{k}={v:.3f}" for k, v in r.scores.items())
        print(f"{i:>2}  {r.score:7.4f}  {r.sku:<24} {r.name}   [{parts}]")
    if known is not None:
        print(f"decision: {'known' if known else 'unknown'} (thresholds: score {thresholds.score}, "
              f"margin {thresholds.margin}, {thresholds.source})")
    return 0
