"""Loop fps with OCR on vs off, side by side in one run (the issue's >= 90 % target).

Simulates the runtime's per-frame work on one kiosk ROI: a product is held in view for
``--hold`` frames (each frame with fresh sensor noise, so views are "unchanged" but never
byte-identical), then the next product comes. *Off*: embed the crop and match it against a
gallery. *On*: the same plus :class:`edge.text.fusion.LabelTextReranker` (OCR on its own thread,
one read per view, cached while the view is unchanged). Frames are processed as fast as
possible (the worst case: at a 15 fps camera cap both loops idle between frames).

    python -m benchmarks.ocr_fps --image-bundle edge/bundles/image \
        --images "../shared/datasets/grocery-store/val/Packages/*/*/*_001.jpg" --hold 45 --json runs/ocr_fps.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._results import write_json
from edge.core.errors import StoreLensError
from edge.core.types import Candidate
from edge.models.encoders.base import ImageEncoder
from edge.models.preprocess import read_image
from edge.text.fusion import FusionWeights, LabelTextReranker
from edge.text.ocr.engine import OcrEngine
from edge.text.ocr.process import ProcessOcrEngine
from edge.text.ocr.worker import OcrWorker, TextReader
from edge.text.profiles import ProductText, TextProfiles


def frames(images: list[np.ndarray], hold: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for im in images:
        for _ in range(hold):
            noise = rng.integers(-3, 4, im.shape, dtype=np.int16)
            out.append(np.clip(im.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return out


def run_loop(encoder: ImageEncoder, gallery: np.ndarray, skus: list[str], stream: list[np.ndarray],
             reranker: LabelTextReranker | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    for i, f in enumerate(stream):
        sims = gallery @ encoder.embed([f])[0]
        top = np.argsort(-sims)[:5]
        cands = [Candidate(sku=skus[j], name=skus[j], score=float(sims[j])) for j in top]
        if reranker is not None:
            reranker.rerank("kiosk", f, cands)
        if i == 0:
            t0 = time.perf_counter()  # the first frame pays model warm-up
    dt = time.perf_counter() - t0
    return {"frames": len(stream) - 1, "seconds": round(dt, 2), "fps": round((len(stream) - 1) / dt, 2)}


def main(argv: list[str] | None = None) -> int:
    from edge.core.config import ModelSettings
    from edge.models.encoders import load_image_encoder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-bundle", type=Path, default=None)
    ap.add_argument("--precision", choices=("fp32", "int8"), default="int8")
    ap.add_argument("--images", default="../shared/datasets/grocery-store/val/Packages/*/*/*_001.jpg")
    ap.add_argument("--hold", type=int, default=45, help="frames each product stays in view (3 s at 15 fps)")
    ap.add_argument("--det-side", type=int, default=480)
    ap.add_argument("--engine", choices=("process", "thread"), default="process",
                    help="OCR in a child process (the runtime's default) or on a thread of this process")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    paths = sorted(glob.glob(args.images))
    if not paths:
        print(f"ocr_fps: error: no image matches {args.images}", file=sys.stderr)
        return 3
    try:
        enc = load_image_encoder(ModelSettings(image_bundle=args.image_bundle, precision=args.precision, threads=1))
        images = [read_image(p) for p in paths]
        gallery = enc.embed(images)
        skus = [Path(p).parent.name for p in paths]
        stream = frames(images, args.hold)
        profiles = TextProfiles.build([ProductText(sku=s, texts=(s.replace("-", " "),)) for s in skus])
        off = run_loop(enc, gallery, skus, stream, None)
        engine: TextReader = (ProcessOcrEngine(threads=1, det_limit_side_len=args.det_side) if args.engine == "process"
                              else OcrEngine(threads=1, det_limit_side_len=args.det_side))
        with OcrWorker(engine=engine) as worker:
            rr = LabelTextReranker(worker=worker, profiles=profiles, weights=FusionWeights(ocr=0.2))
            on = run_loop(enc, gallery, skus, stream, rr)
            ocr = worker.stats().to_dict()
        off2 = run_loop(enc, gallery, skus, stream, None)  # off again: drift of the machine between runs
    except StoreLensError as e:
        print(f"ocr_fps: error: {e}", file=sys.stderr)
        return e.exit_code
    fps_off = (off["fps"] + off2["fps"]) / 2
    res = {"views": len(paths), "hold": args.hold, "off": off, "on": on, "off_again": off2,
           "ratio_on_off": round(on["fps"] / fps_off, 3), "ocr": ocr, "det_side": args.det_side, "engine": args.engine,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                       "encoder": enc.fingerprint, "load1": os.getloadavg()[0]}}
    print(json.dumps(res, indent=1))
    if args.json:
        write_json(args.json, res, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
