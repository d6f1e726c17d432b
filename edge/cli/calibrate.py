"""``storelens calibrate LABELLED``: choose the unknown-product thresholds and store them with the catalog."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge.catalog.calibration import (
    DEFAULT_HOLDOUT,
    DEFAULT_MAX_WRONG,
    DEFAULT_TARGET,
    read_labelled,
    run_calibration,
)
from edge.cli.calibrate_report import fusion_lines, previous_summary, report_lines
from edge.cli.common import add_common, open_store, settings_from_args


def register(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate", help="calibrate unknown-product rejection from labelled photos",
        description="Search every labelled photo against the catalog and choose a threshold on the top score and "
        "on the top-1 minus top-2 margin that names the most photos correctly while at most --max-wrong of what it "
        "names is wrong (another enrolled product, or a product held out of the catalog: --holdout of the enrolled "
        "products are treated as not enrolled; labelled products missing from the catalog are held out too). "
        "The thresholds are stored with "
        "the catalog; decision.threshold / decision.margin in the config override them.")
    p.add_argument("labelled", type=Path, help="split file (`path, class_id, ...` + classes.csv beside it) or "
                   "<root>/<sku>/*.jpg folder")
    p.add_argument("--classes", type=Path, default=None, help="classes.csv for a split file (default: beside it)")
    p.add_argument("--max-wrong", type=float, default=None,
                   help=f"target share of wrong answers among everything the kiosk names: another enrolled product "
                   f"or one that is not enrolled (default {DEFAULT_MAX_WRONG}); chosen on half the photos, checked "
                   "on the other half")
    p.add_argument("--target", type=float, default=None,
                   help=f"the older acceptance mode instead: share of known-product photos to accept (e.g. "
                   f"{DEFAULT_TARGET}); it does not count wrong enrolled products")
    p.add_argument("--holdout", type=float, default=DEFAULT_HOLDOUT,
                   help=f"share of enrolled products to hold out ({DEFAULT_HOLDOUT})")
    p.add_argument("--seed", type=int, default=0, help="which products are held out")
    p.add_argument("--dry-run", action="store_true", help="report, do not store the thresholds")
    p.add_argument("--fusion", action="store_true", help="also fit the OCR fusion weight (edge.text.fusion) on the "
                   "labelled photos of enrolled products and store it with the catalog (OCR: ~0.2-1 s a photo)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    labelled = read_labelled(args.labelled, classes=args.classes)
    store = open_store(args, image=True, text=False)
    try:
        mode = _mode(args)
        empty = frozenset({settings_from_args(args).decision.empty_sku})  # never an item's answer at a kiosk
        cal, problems = run_calibration(store, labelled, **mode, holdout=args.holdout, seed=args.seed, exclude=empty)
        previous = store.calibration  # said when replaced, never silently (edge.cli.calibrate_report)
        if not args.dry_run:
            store.save_calibration(cal)
        if args.fusion:
            problems += _fit_fusion(store, labelled, dry_run=args.dry_run)
    finally:
        store.close()
    if args.json:
        out = {**json.loads(cal.to_json()), "stored": not args.dry_run, "problems": problems,
               "replaced": previous_summary(previous) if not args.dry_run else None}
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    for p in problems:
        print(p)
    print("\n".join(report_lines(cal, previous=previous, stored=not args.dry_run)))
    if cal.learn_floor is not None:
        print(f"learning: a confirmed crop below cosine {cal.learn_floor:.3f} to its product's photos is held")
    print("stored with the catalog" if not args.dry_run else "dry run: not stored")
    return 0


def _mode(args: argparse.Namespace) -> dict[str, Any]:
    """Risk mode (``--max-wrong``, the default) or the older acceptance mode (``--target``), not both."""
    if args.target is not None and args.max_wrong is not None:
        from edge.core.errors import InputError

        raise InputError("--target and --max-wrong choose thresholds in two different ways",
                         hint="give one: --max-wrong 0.02 (recommended) or --target 0.95")
    if args.target is not None:
        return {"target": args.target, "max_wrong": None}
    return {"max_wrong": DEFAULT_MAX_WRONG if args.max_wrong is None else args.max_wrong}


def _fit_fusion(store: Any, labelled: list[tuple[Path, str]], *, dry_run: bool) -> list[str]:
    """Fit the OCR weight on the labelled photos of enrolled products (edge.text.profiles.calibrate_fusion)."""
    from edge.core.config import OcrSettings
    from edge.core.errors import ImageError
    from edge.models.preprocess import read_image
    from edge.text.calibration import calibrate_fusion
    from edge.text.fusion import load_weights, save_weights
    from edge.text.ocr.engine import OcrEngine

    enrolled = {p.sku for p in store.catalog.products()}
    images, labels, problems = [], [], []
    for path, sku in labelled:
        if sku in enrolled:
            try:
                images.append(read_image(path))
                labels.append(sku)
            except ImageError as e:
                problems.append(f"fusion: skipped: {e}")
    before = load_weights(store.catalog)
    o = OcrSettings()
    w = calibrate_fusion(store, images, labels, OcrEngine(threads=o.threads, det_limit_side_len=o.det_side))
    if dry_run:
        save_weights(store.catalog, before)
    return problems + fusion_lines(w, before, photos=len(labels), dry_run=dry_run)
