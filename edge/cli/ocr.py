"""``storelens ocr read IMAGE`` and ``storelens ocr enroll``: label text off images and reference photos."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge.cli.common import settings_from_args
from edge.text.profiles import PHOTOS_PER_PRODUCT


def register(sub: Any) -> None:
    p = sub.add_parser("ocr", help="read label text off images; add reference-photo text to the catalog",
                       description="Label text (rapidocr-onnxruntime, PP-OCR models shipped in the wheel). "
                       "`read` prints what OCR reads off images and, with a catalog, the products whose text "
                       "matches best. `enroll` OCRs each product's reference photos and stores the words as "
                       "its `ocr` text, used by fusion and by text search.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    r = verbs.add_parser("read", help="OCR images and match the words against the catalog")
    r.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG)")
    r.add_argument("-k", type=int, default=3, help="products to list per image (default 3)")
    e = verbs.add_parser("enroll", help="OCR reference photos into the catalog's product text")
    e.add_argument("--max-photos", type=int, default=PHOTOS_PER_PRODUCT,
                   help=f"reference photos read a product (default {PHOTOS_PER_PRODUCT})")
    e.add_argument("--sku", action="append", default=None, help="only this product (repeatable)")
    for q in (r, e):
        q.add_argument("--config", type=Path, default=None, help="TOML config ([ocr] and catalog.data_dir)")
        q.add_argument("--data-dir", type=Path, default=None, help="override catalog.data_dir")
        q.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.text.ocr.engine import OcrEngine

    settings = settings_from_args(args)
    ocr, data_dir = settings.ocr, settings.catalog.data_dir
    engine = OcrEngine(threads=ocr.threads, min_score=ocr.min_score, det_limit_side_len=ocr.det_side)
    return _read(args, engine, data_dir) if args.verb == "read" else _enroll(args, engine, data_dir)


def _read(args: argparse.Namespace, engine: Any, data_dir: Path) -> int:
    from edge.models.preprocess import read_image

    profiles = None
    if (data_dir / "catalog.db").is_file():
        from edge.catalog.db import Catalog
        from edge.text.profiles import catalog_profiles

        cat = Catalog(data_dir / "catalog.db")
        try:
            profiles = catalog_profiles(cat)
        finally:
            cat.close()
    rows = []
    for path in args.images:
        result = engine.read(read_image(path))
        row: dict[str, Any] = {"image": str(path), **result.to_dict(), "tokens": list(result.tokens)}
        if profiles is not None:
            scores = profiles.score(result.tokens)
            best = sorted(((float(s), sku) for sku, s in zip(profiles.skus, scores, strict=True) if s > 0),
                          reverse=True)[: args.k]
            row["products"] = [{"sku": sku, "text_score": round(s, 4)} for s, sku in best]
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        for row in rows:
            print(f"{row['image']}  ({row['latency_ms']:.0f} ms)")
            for text, score in row["lines"]:
                print(f"  {score:.2f}  {text}")
            for prod in row.get("products", []):
                print(f"  -> {prod['sku']}  text score {prod['text_score']:.3f}")
    return 0


def _enroll(args: argparse.Namespace, engine: Any, data_dir: Path) -> int:
    from edge.catalog.store import Store
    from edge.core.errors import CatalogError
    from edge.text.profiles import read_reference_photos

    if not (data_dir / "catalog.db").is_file():
        raise CatalogError(f"no catalog at {data_dir}", hint="import products first (storelens catalog import)")
    store = Store(data_dir=data_dir)
    try:
        counts = read_reference_photos(store, engine, max_photos=args.max_photos, skus=args.sku)
    finally:
        store.close()
    print(json.dumps(counts) if args.json else
          f"read {counts['photos']} photos of {counts['products']} products: {counts['with_text']} with text, "
          f"{counts['unreadable']} unreadable (skipped)")
    return 0
