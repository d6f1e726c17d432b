"""``storelens recommend --sku X``: bought-together / similar products from this device's data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge.cli.common import settings_from_args
from edge.recommend.service import KINDS, Recommendation, open_recommender
from edge.recommend.similar import Filters, ProductVectors


def register(sub: Any) -> None:
    p = sub.add_parser(
        "recommend",
        help="suggest products bought together with, or similar to, a product",
        description="Recommendations for a product (or a basket: repeat --sku). `together` ranks complements "
        "from the sold baskets counted in <data_dir>/baskets.db (EASE / shrunk PMI, time-decayed), filling up "
        "with popular and then similar products when evidence is thin; `similar` ranks alternatives by fused "
        "image+text product vectors from the catalog; `blend` alternates the two. Each line says its source.",
    )
    p.add_argument("--sku", action="append", required=True, help="product sku (repeat for a basket)")
    p.add_argument("--kind", choices=KINDS, default="together", help="what to suggest (default: together)")
    p.add_argument("-k", type=int, default=None, help="how many (default: recommend.k from the config)")
    p.add_argument("--config", type=Path, default=None, help="TOML config (data_dir and the [recommend] section)")
    p.add_argument("--data-dir", type=Path, default=None, help="override catalog.data_dir")
    p.add_argument("--in-stock-only", action="store_true", help="leave out products marked out of stock")
    p.add_argument("--same-category", action="store_true", help="similar: only the product's own category")
    p.add_argument("--price-band", type=float, default=None, metavar="F",
                   help="similar: only products priced within a factor F of this one (e.g. 1.5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    rec, data_dir = settings.recommend, settings.catalog.data_dir
    products = load_products(data_dir, rec.image_weight)
    recommender = open_recommender(rec, data_dir=data_dir, products=products)
    try:
        filters = Filters(in_stock_only=args.in_stock_only, same_category=args.same_category,
                          price_band=args.price_band)
        recs = recommender.recommend(args.sku, kind=args.kind, k=args.k, filters=filters)
        stats = recommender.stats()
    finally:
        recommender.store.close()
    if args.json:
        print(json.dumps({"skus": args.sku, "kind": args.kind, "method": stats["method"],
                          "model_version": stats["model_version"], "baskets": stats["baskets"],
                          "recommendations": [r.to_dict() for r in recs]}, indent=2))
    else:
        print(_table(recs, args.sku, stats))
    return 0


def load_products(data_dir: Path, image_weight: float) -> ProductVectors | None:
    """Product vectors from ``<data_dir>/catalog.db`` for the encoders its indexes were built with; None if absent."""
    if not (Path(data_dir) / "catalog.db").is_file():
        return None
    from edge.catalog.db import Catalog
    from edge.catalog.index import read_meta

    image, text = read_meta(Path(data_dir), "image"), read_meta(Path(data_dir), "text")
    if image is None and text is None:
        return None
    catalog = Catalog(Path(data_dir) / "catalog.db")
    try:
        return ProductVectors.from_catalog(catalog, image_fingerprint=image.fingerprint if image else None,
                                           text_fingerprint=text.fingerprint if text else None,
                                           image_weight=image_weight)
    finally:
        catalog.close()


def _table(recs: list[Recommendation], skus: list[str], stats: dict[str, Any]) -> str:
    head = (f"for {', '.join(skus)} ({stats['method']} model v{stats['model_version']}, "
            f"{stats['baskets']['accepted']} baskets counted)")
    if not recs:
        return head + "\n  (nothing to suggest: no baskets counted and no product vectors)"
    width = max(len(r.sku) for r in recs)
    lines = [head] + [f"  {i:>2}. {r.sku:<{width}}  {r.score:>8.4f}  {r.source:<8}  {r.name}"
                      for i, r in enumerate(recs, 1)]
    return "\n".join(lines)
