"""The multimodal benchmark's OCR cache is keyed by engine, version and settings: a reading is never reused
by a run that reads with another detector side or score floor (real rapidocr on a tiny image)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks._ocr_readings import cache_settings, engine_settings, load_cache
from benchmarks.ocr_cache import fill_cache
from edge.core.errors import InputError
from edge.text.ocr.engine import OcrEngine


def test_a_cache_read_with_other_settings_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "data" / "a.jpg"
    img.parent.mkdir()
    cv2.imwrite(str(img), np.full((48, 64, 3), 255, np.uint8))
    cache = tmp_path / "ocr.jsonl"
    e480 = OcrEngine(threads=1, det_limit_side_len=480, min_score=0.5)
    assert fill_cache(cache, [img], root=img.parent, engine=e480)["read"] == 1
    assert cache_settings(cache) == engine_settings(e480) and engine_settings(e480)["version"] != "?"
    assert set(load_cache(cache, settings=engine_settings(e480))) == {"a.jpg"}
    e736 = OcrEngine(threads=1, det_limit_side_len=736, min_score=0.5)
    with pytest.raises(InputError, match="was read with"):
        fill_cache(cache, [img], root=img.parent, engine=e736)
    with pytest.raises(InputError, match="was read with"):
        load_cache(cache, settings=engine_settings(OcrEngine(threads=1, det_limit_side_len=480, min_score=0.3)))
    old = tmp_path / "old.jsonl"  # a cache from before: no settings line
    old.write_text(cache.read_text().splitlines()[1] + "\n")
    assert cache_settings(old) is None
    with pytest.raises(InputError, match="unrecorded settings"):
        load_cache(old, settings=engine_settings(e480))
