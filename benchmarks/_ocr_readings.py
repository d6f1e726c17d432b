"""Reading the OCR cache that benchmarks/ocr_cache.py writes: its keys, its lines, its latencies.

Apart from the writer so that the benchmarks reading the cache (benchmarks.multimodal) and the
writer, which asks benchmarks.multimodal which images to read, do not import each other.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edge.core.errors import InputError
from edge.text.ocr.engine import OcrResult


def cache_key(path: Path, root: Path) -> str:
    """Images are keyed by their path relative to the dataset root (the split file's folder)."""
    p, r = Path(os.path.abspath(path)), Path(os.path.abspath(root))  # not resolve(): keep symlinked roots
    try:
        return p.relative_to(r).as_posix()
    except ValueError:
        return p.as_posix()


def engine_settings(engine: Any) -> dict[str, Any]:
    """What a reading depends on besides the image: the OCR package and its version, the detector side,
    the recogniser's score floor (the cache's first line records it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("rapidocr-onnxruntime")
    except PackageNotFoundError:
        v = "?"
    return {"engine": "rapidocr-onnxruntime", "version": v, "det_limit_side_len": engine.det_limit_side_len,
            "min_score": engine.min_score}


def cache_settings(path: Path) -> dict[str, Any] | None:
    """The engine settings a cache file was read with (its first line), or None for a file without them."""
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as fh:
        first = fh.readline()
    try:
        head = json.loads(first)
    except ValueError:
        return None
    return dict(head["settings"]) if isinstance(head, dict) and "settings" in head else None


def load_cache(path: Path, *, settings: dict[str, Any] | None = None) -> dict[str, OcrResult]:
    """Cached readings by key; a torn last line (interrupted run) is ignored and re-read next time.

    ``settings``: the engine settings the caller reads with; a cache read with others (or that does not say)
    is refused, so a reading is never reused across engines, versions, detector sides or score floors."""
    out: dict[str, OcrResult] = {}
    if not path.is_file():
        return out
    if settings is not None and (have := cache_settings(path)) != settings:
        raise InputError(f"OCR cache {path} was read with {have or 'unrecorded settings'}, not {settings}",
                         hint="pass another --out (or --ocr-cache), or delete the file to read again")
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if "key" in d:
            out[d["key"]] = OcrResult.from_dict(d)
    return out


def latency_summary(results: Iterable[OcrResult]) -> dict[str, float]:
    ms = sorted(r.latency_ms for r in results if r.error is None and r.latency_ms > 0)
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "mean_ms": round(statistics.fmean(ms), 1), "p50_ms": round(ms[len(ms) // 2], 1),
            "p95_ms": round(ms[int(len(ms) * 0.95)], 1), "max_ms": round(ms[-1], 1)}
