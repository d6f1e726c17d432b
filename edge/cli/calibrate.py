"""``storelens calibrate LABELLED``: choose the unknown-product thresholds and store them with the catalog."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge.catalog.calibration import DEFAULT_HOLDOUT, DEFAULT_TARGET, read_labelled, run_calibration
from edge.cli.calibrate_report import fusion_lines, previous_summary, report_lines
from edge.cli.common import add_common, open_store


def register(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate", help="calibrate unknown-product rejection from labelled photos",
        description="Search every labelled photo against the catalog and choose a threshold on the top score and "
        "on the top-1 minus top-2 margin that accepts --target of the photos of enrolled products with the fewest "
        "false accepts on products held out of the catalog (--holdout of the enrolled products are treated as not "
        "enrolled; labelled products missing from the catalog are held out too). The thresholds are stored with "
        "the catalog; decision.threshold / decision.margin in the config override them.")
    p.add_argument("labelled", type=Path, help="split file (`path, class_id, ...` + classes.csv beside it) or "
                   "<root>/<sku>/*.jpg folder")
    p.add_argument("--classes", type=Path, default=None, help="classes.csv for a split file (default: beside it)")
    p.add_argument("--target", type=float, default=DEFAULT_TARGET,
                   help=f"share of known-product photos to accept ({DEFAULT_TARGET})")
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
        cal, problems = run_calibration(store, labelled, target=args.target, holdout=args.holdout, seed=args.seed)
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
