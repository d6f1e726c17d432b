"""``storelens search --image PATH --text QUERY``: ranked products as a table or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge.catalog.ranking import DEFAULT_K, Ranked
from edge.cli.common import add_common, open_store
from edge.core.errors import InputError
from edge.core.types import Thresholds
from edge.models.preprocess import read_image


def register(sub: Any) -> None:
    p = sub.add_parser(
        "search", help="find products by photo, by text, or both",
        description="Rank catalog products for a photo (image index, a product's several photos aggregated), a "
        "text query (hybrid: FTS5 BM25 + text embeddings, reciprocal rank fusion), or both fused. Shows whether "
        "the top hit clears the catalog's unknown-product thresholds.")
    p.add_argument("--image", type=Path, default=None, metavar="PATH", help="query photo")
    p.add_argument("--text", default=None, metavar="QUERY", help="query words")
    p.add_argument("-k", type=int, default=DEFAULT_K,
                   help=f"how many products (clamped to the catalog size; default {DEFAULT_K})")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.image is None and not args.text:
        raise InputError("nothing to search for", hint="pass --image PATH, --text QUERY, or both")
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
                          "text_match": text_matched(ranked) if args.text else None,
                          "thresholds": {"score": thresholds.score, "margin": thresholds.margin,
                                         "source": thresholds.source},
                          "results": [r.to_dict() for r in ranked]}, indent=2, ensure_ascii=False))
        return 0
    print_results(ranked, text=args.text, image=image is not None)
    if known is not None:
        print(decision_note(known, thresholds))
    return 0


# what each raw score in a result is, in words (keys of Ranked.scores; edge.catalog.text_search)
SCORE_LABELS = {"image": "photo", "bm25": "words", "every": "all words", "same": "synonyms",
                "purpose": "purpose", "text": "meaning", "text_x": "synonym meaning", "ocr": "label text"}
LEXICAL = ("bm25", "every", "same", "purpose")  # rankings that need a query word (or its synonym) in the product
MAX_COLUMN = 40  # a longer sku or name is cut with an ellipsis so the columns stay aligned


def text_matched(ranked: list[Ranked]) -> bool:
    """True when some result holds a word of the query (or a synonym of one), not only a near meaning."""
    return any(k in r.scores for r in ranked for k in LEXICAL)


def evidence(scores: dict[str, float] | Any) -> str:
    """``photo 0.824 · words 3.43``: each ranking that found the product, in words, rounded."""
    return " · ".join(f"{SCORE_LABELS.get(k, k)} {v:.3f}" for k, v in scores.items())


def print_results(ranked: list[Ranked], *, text: str | None, image: bool) -> None:
    """The ranked products as aligned columns; says when no product holds the query's words."""
    if not ranked:
        print("no matching product")
        return
    if text and not text_matched(ranked):
        print(f"no match: no product has the words of {text!r} (or a synonym of them); "
              "the nearest by meaning, which may be unrelated:")
    sku_w = min(MAX_COLUMN, max(3, *(len(r.sku) for r in ranked)))
    name_w = min(MAX_COLUMN, max(4, *(len(r.name) for r in ranked)))
    print(f"{'#':>2}  {'score':>6}  {'sku':<{sku_w}}  {'name':<{name_w}}  found by")
    for i, r in enumerate(ranked, start=1):
        print(f"{i:>2}  {r.score:6.3f}  {_cut(r.sku, sku_w):<{sku_w}}  {_cut(r.name, name_w):<{name_w}}  "
              f"{evidence(r.scores)}")
    if image and text:
        by_photo = max(ranked, key=lambda r: r.scores.get("image", float("-inf")))
        if "image" in by_photo.scores and by_photo.sku != ranked[0].sku:
            print(f"note: the photo alone ranks {by_photo.sku} first (photo {by_photo.scores['image']:.3f}); "
                  f"the words moved {ranked[0].sku} above it")
    if text:
        print("score: reciprocal-rank fusion of the rankings under 'found by' (higher is better; "
              "compare within one search only)")


def decision_note(known: bool, t: Thresholds) -> str:
    """The unknown-product decision for a photo, with the thresholds rounded and where they come from."""
    if t.score is None and t.margin is None:
        return (f"decision: {'known' if known else 'unknown'} (no thresholds: every photo is accepted; "
                "run `storelens calibrate` to reject products that are not in the catalog)")
    parts = [f"score >= {t.score:.3g}" if t.score is not None else None,
             f"lead over the next >= {t.margin:.3g}" if t.margin is not None else None]
    return f"decision: {'known' if known else 'unknown'} (needs {' and '.join(p for p in parts if p)}; {t.source})"


def _cut(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"
