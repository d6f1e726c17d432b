"""``storelens catalog add|remove|import|list|reindex`` (and ``build|publish|rollback``, edge.cli.catalog_fleet)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge.catalog.importers.gsd import DEFAULT_SPLIT, PHOTOS_PER_PRODUCT, read_grocery_store
from edge.catalog.importers.tables import detect_format, read_folder, read_table
from edge.catalog.writer import ImportReport
from edge.cli.catalog_fleet import register_actions
from edge.cli.common import add_common, open_store
from edge.cli.learning import register_learning
from edge.core.errors import InputError

MAX_ISSUES_SHOWN = 20


def register(sub: Any) -> None:
    p = sub.add_parser("catalog", help="add, remove, import and list products",
                       description="Manage the product catalog (SQLite + one USearch index per modality). Changes "
                       "are written beside the current index and swapped in atomically; a running `storelens run` "
                       "picks them up on reload.")
    csub = p.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)

    a = csub.add_parser("add", help="enroll (or update) one product", description="Enroll one product with its "
                        "reference images. An existing sku is updated: the fields given change, the others keep "
                        "their values, and its photos stay unless --image is given (then they are replaced, and "
                        "the command says how many were).")
    a.add_argument("sku", help="unique product id")
    a.add_argument("--name", default=None, help="display name (required for a new sku)")
    a.add_argument("--image", action="append", type=Path, default=[], metavar="PATH",
                   help="reference image (repeat for several photos); replaces an existing sku's photos")
    a.add_argument("--description", default=None, help="free text, searchable")
    a.add_argument("--price", type=float, default=None)
    a.add_argument("--location", default=None, help="aisle / shelf")
    a.add_argument("--barcode", default=None)
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    add_common(a)
    a.set_defaults(func=run_add)

    r = csub.add_parser("remove", help="remove a product", description="Remove a product, its images and vectors.")
    r.add_argument("sku")
    add_common(r)
    r.set_defaults(func=run_remove)

    i = csub.add_parser("import", help="import many products", description="Import a CSV/JSONL product table "
                        "(sku,name,description,price,location,barcode,images; images `;`-separated, relative to "
                        "the table), a <root>/<sku>/*.jpg folder, or the Grocery Store dataset folder. Bad rows are "
                        "reported with file and line, skipped, and counted; the rest is imported.")
    i.add_argument("source", type=Path, help="table file or folder")
    i.add_argument("--format", choices=["auto", "table", "folder", "grocery-store"], default="auto")
    i.add_argument("--split", default=DEFAULT_SPLIT,
                   help="grocery-store: split file whose photos become reference images ('' = iconic only)")
    i.add_argument("--max-images", type=int, default=PHOTOS_PER_PRODUCT,
                   help=f"grocery-store: photos per product (default {PHOTOS_PER_PRODUCT})")
    i.add_argument("--replace", action="store_true", help="update skus already in the catalog instead of skipping")
    i.add_argument("--strict", action="store_true", help="exit 3 when any row was skipped")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    add_common(i)
    i.set_defaults(func=run_import)

    ls = csub.add_parser("list", help="list products", description="List the catalog's products.")
    ls.add_argument("--json", action="store_true")
    add_common(ls)
    ls.set_defaults(func=run_list)

    x = csub.add_parser("reindex", help="rebuild the indexes", description="Rebuild the indexes from the vectors "
                        "stored in the catalog (after changing catalog.index_dtype), or re-embed every reference "
                        "image with --reembed (after changing the encoder bundle).")
    x.add_argument("--reembed", action="store_true", help="re-read and re-embed every image and product text")
    add_common(x)
    x.set_defaults(func=run_reindex)
    register_actions(csub, add_common)  # build, publish, rollback: catalog snapshots for a chain (edge.fleet)
    register_learning(csub, add_common)  # learned, forget-learned: photos learned from confirmations


def run_add(args: argparse.Namespace) -> int:
    """Enroll a new sku, or update an existing one: given fields change, the rest (photos included) stay."""
    store = open_store(args, image=bool(args.image), text=True)
    try:
        old = store.catalog.get(args.sku)
        if old is None and args.name is None:
            raise InputError(f"sku {args.sku!r} is new: --name is required",
                             hint="give the product's display name, e.g. --name \"Oat milk 1 l\"")
        photos = len(store.catalog.images(args.sku)) if old is not None else 0
        given = {"name": args.name, "description": args.description, "price": args.price,
                 "location": args.location, "barcode": args.barcode}
        fields = {k: v if v is not None else (getattr(old, k) if old is not None else None) for k, v in given.items()}
        report = store.enroll(args.sku, images=args.image, attributes=old.attributes if old is not None else None,
                              **{**fields, "description": fields["description"] or ""})
        where = store.data_dir
    finally:
        store.close()
    if old is not None and not args.json:
        print(f"replaced the {photos} photos of {args.sku} with {report.images_added}" if args.image else
              f"updated {args.sku}: kept its {photos} photos (--image replaces them)")
    _print_report(report, as_json=args.json, data_dir=where)
    return 0


def run_remove(args: argparse.Namespace) -> int:
    store = open_store(args, image=False, text=False)
    try:
        if not store.remove(args.sku):
            raise InputError(f"sku {args.sku!r} is not in the catalog", hint="`storelens catalog list` shows the skus")
        print(f"removed {args.sku} (catalog version {store.catalog_version})")
    finally:
        store.close()
    return 0


def run_import(args: argparse.Namespace) -> int:
    fmt = detect_format(args.source) if args.format == "auto" else args.format
    if fmt == "table":
        records = list(read_table(args.source))
    elif fmt == "folder":
        records = list(read_folder(args.source))
    else:
        records = list(read_grocery_store(args.source, split=args.split or None, max_images=args.max_images))
    store = open_store(args, image=True, text=True)
    try:
        report = store.import_records(records, replace=args.replace, total=len(records))
        where = store.data_dir
    finally:
        store.close()
    _print_report(report, as_json=args.json, data_dir=where)
    return 3 if args.strict and report.rows_skipped else 0


def run_list(args: argparse.Namespace) -> int:
    store = open_store(args, image=False, text=False)
    try:
        products = store.catalog.products()
        counts = {p.sku: len(store.catalog.images(p.sku)) for p in products}
        version = store.catalog_version
        where = store.data_dir
    finally:
        store.close()
    if args.json:
        rows = [{**p.to_dict(), "images": counts[p.sku]} for p in products]
        print(json.dumps({"catalog_version": version, "data_dir": str(where), "products": rows}, indent=2,
                         ensure_ascii=False))
        return 0
    print(f"{'sku':<24} {'images':>6}  name")
    for p in products:
        print(f"{p.sku:<24} {counts[p.sku]:>6}  {p.name}")
    print(f"{len(products)} products, catalog version {version}, catalog in {where.resolve()}")
    return 0


def run_reindex(args: argparse.Namespace) -> int:
    store = open_store(args, image=True, text=True, open_indexes=False)
    try:
        if args.reembed:
            report = store.writer.reembed()
            _print_report(report, as_json=False, data_dir=store.data_dir)
        else:
            store.writer.rebuild_indexes()
        for modality in ("image", "text"):
            meta = store.index_meta(modality)
            if meta:
                print(f"{modality}: {meta.vectors} vectors, {meta.products} products, dtype {meta.dtype}")
    finally:
        store.close()
    return 0


def _print_report(report: ImportReport, *, as_json: bool, data_dir: Path) -> None:
    if as_json:
        print(json.dumps({**report.to_dict(), "data_dir": str(data_dir)}, indent=2, ensure_ascii=False))
        return
    for issue in report.issues[:MAX_ISSUES_SHOWN]:
        print(f"skipped: {issue}")
    if len(report.issues) > MAX_ISSUES_SHOWN:
        print(f"... and {len(report.issues) - MAX_ISSUES_SHOWN} more (use --json for all)")
    print(f"{report.rows} rows: {report.products_added} added, {report.products_replaced} replaced, "
          f"{report.rows_skipped} skipped ({len(report.issues)} issues); {report.images_added} images; "
          f"catalog version {report.catalog_version}; catalog in {data_dir.resolve()}")
