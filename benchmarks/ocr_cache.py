"""OCR dataset images once into a JSONL cache under runs/ (gitignored), for the multimodal benchmark.

rapidocr costs ~0.1-0.3 s a 348 px photo on one core, so the benchmark never re-reads an
image: this script reads exactly the images the evaluation needs (every query of the val
split and of the validation carved from train, N reference photos a product for the word
profiles, the iconic catalogue images), in one process with a progress bar, and appends one
JSON line per image. Re-running it only reads what is missing. Unreadable images are
recorded with their error, counted and reported, never dropped silently.

    python -m benchmarks.ocr_cache --train ../shared/datasets/grocery-store/train.txt \
        --val ../shared/datasets/grocery-store/val.txt [--det-side 480] [--min-score 0.5] \
        [--out runs/ocr-cache/det480.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from benchmarks._ocr_readings import cache_key, engine_settings, latency_summary, load_cache
from benchmarks.multimodal import bundle_training, needed_images
from edge.core.errors import StoreLensError
from edge.models.preprocess import read_image
from edge.text.ocr.engine import OcrEngine, OcrResult

# the readers live in _ocr_readings
__all__ = ["cache_key", "engine_settings", "fill_cache", "latency_summary", "load_cache", "main"]


def fill_cache(path: Path, images: Iterable[Path], *, root: Path, engine: OcrEngine) -> dict[str, int]:
    """OCR the images not yet in the cache, appending one JSON line each; return counts."""
    settings = engine_settings(engine)
    have = load_cache(path, settings=settings)  # refused when the file was read with other settings
    todo = [p for p in dict.fromkeys(images) if cache_key(p, root) not in have]
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = 0
    if not path.is_file():
        path.write_text(json.dumps({"settings": settings}) + "\n", encoding="utf-8")
    with path.open("a", encoding="utf-8") as fh:
        for p in tqdm(todo, desc="ocr", unit="img"):
            try:
                result = engine.read(read_image(p))
            except StoreLensError as e:
                errors += 1
                result = OcrResult(lines=(), latency_ms=0.0, error=str(e))
                print(f"ocr_cache: {p}: {e}", file=sys.stderr)
            fh.write(json.dumps({"key": cache_key(p, root), **result.to_dict()}, ensure_ascii=False) + "\n")
            fh.flush()
    return {"cached_before": len(have), "read": len(todo) - errors, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, required=True, help="train split file (word profiles, carved queries)")
    ap.add_argument("--val", type=Path, required=True, help="val split file (queries)")
    ap.add_argument("--profile-photos", type=int, default=8,
                    help="reference photos a product OCR'd for its profile (as `storelens ocr enroll`)")
    ap.add_argument("--det-side", type=int, default=480,
                    help="OCR detector short side (px; 480 as the edge's OcrEngine)")
    ap.add_argument("--min-score", type=float, default=0.5,
                    help="drop lines the recogniser is less sure of (0.5 as the edge's OcrEngine)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads for OCR")
    ap.add_argument("--out", type=Path, default=Path("runs/ocr-cache/det480.jsonl"), help="JSONL cache file")
    ap.add_argument("--image-bundle", type=Path, default=None,
                    help="image bundle whose training carve gives the carved queries (default: the embedded one)")
    args = ap.parse_args(argv)
    try:
        from edge.models.bundle import default_bundle_path

        training = bundle_training(args.image_bundle or default_bundle_path("image"))
        images = needed_images(args.train, args.val, profile_photos=args.profile_photos, training=training)
        engine = OcrEngine(threads=args.threads, det_limit_side_len=args.det_side, min_score=args.min_score)
        counts = fill_cache(args.out, images, root=args.train.parent, engine=engine)
    except StoreLensError as e:
        print(f"ocr_cache: error: {e}", file=sys.stderr)
        return e.exit_code
    cache = load_cache(args.out)
    print(json.dumps({"images": len(images), **counts, "latency": latency_summary(cache.values()),
                      "cache": str(args.out)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
