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

from edge.text.ocr.engine import OcrResult


def cache_key(path: Path, root: Path) -> str:
    """Images are keyed by their path relative to the dataset root (the split file's folder)."""
    p, r = Path(os.path.abspath(path)), Path(os.path.abspath(root))  # not resolve(): keep symlinked roots
    try:
        return p.relative_to(r).as_posix()
    except ValueError:
        return p.as_posix()


def load_cache(path: Path) -> dict[str, OcrResult]:
    """Cached readings by key; a torn last line (interrupted run) is ignored and re-read next time."""
    out: dict[str, OcrResult] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        out[d["key"]] = OcrResult.from_dict(d)
    return out


def latency_summary(results: Iterable[OcrResult]) -> dict[str, float]:
    ms = sorted(r.latency_ms for r in results if r.error is None and r.latency_ms > 0)
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "mean_ms": round(statistics.fmean(ms), 1), "p50_ms": round(ms[len(ms) // 2], 1),
            "p95_ms": round(ms[int(len(ms) * 0.95)], 1), "max_ms": round(ms[-1], 1)}
