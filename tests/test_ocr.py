"""OCR on label images the tests draw (real rapidocr-onnxruntime sessions), text normalisation, the worker."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from edge.core.errors import BackendError, ImageError
from edge.text.normalise import normalise_text, tokens
from edge.text.ocr.engine import OcrEngine, OcrResult
from edge.text.ocr.worker import OcrWorker


def label(*words: str, width: int = 420) -> np.ndarray:
    """A white carton face with each word on its own line in a large, clear font."""
    img = np.full((70 + 80 * len(words), width, 3), 255, np.uint8)
    for i, w in enumerate(words):
        cv2.putText(img, w, (20, 80 + 80 * i), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (20, 20, 20), 5, cv2.LINE_AA)
    return img


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    return OcrEngine(threads=1)


def test_normalise_folds_case_and_swedish_diacritics_the_same_way_on_both_sides() -> None:
    assert normalise_text("Gräddfil ÖKOLOGISK Crème Fraîche Å") == "graddfil okologisk creme fraiche a"
    assert tokens("GRÄDDFIL 12% fett, 1kg; Arla-Ko") == ["graddfil", "12", "fett", "1kg", "arla", "ko"]
    assert tokens("a b cd") == ["cd"]
    assert tokens("a b cd", min_len=1) == ["a", "b", "cd"]


def test_engine_reads_rendered_label_words(engine: OcrEngine) -> None:
    result = engine.read(label("ARLA", "GRADDFIL"))
    assert result.tokens == ("arla", "graddfil")
    assert all(0.5 <= ln.score <= 1.0 for ln in result.lines)
    assert result.latency_ms > 0
    assert OcrResult.from_dict(result.to_dict()).tokens == result.tokens


def test_engine_reads_nothing_off_a_plain_surface(engine: OcrEngine) -> None:
    result = engine.read(np.full((200, 300, 3), 128, np.uint8))
    assert result.lines == ()
    assert result.tokens == ()


def test_engine_rejects_non_images_with_a_clear_error(engine: OcrEngine) -> None:
    with pytest.raises(ImageError, match="non-empty BGR uint8"):
        engine.read(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ImageError, match="uint8 pixels"):
        engine.read(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(BackendError, match="threads"):
        OcrEngine(threads=0)


def test_worker_reads_off_the_callers_thread_and_caches_per_unchanged_view(engine: OcrEngine) -> None:
    oat, milk = label("OATLY"), label("MJOLK")
    with OcrWorker(engine=engine) as worker:
        assert worker.request("left", oat) is None  # scheduled, never blocks
        first = worker.wait("left", timeout=120)
        assert first is not None and first.tokens == ("oatly",)
        noisy = np.clip(oat.astype(np.int16) + 2, 0, 255).astype(np.uint8)  # same view, sensor noise
        assert worker.request("left", noisy) is first  # cache hit: no second read
        assert worker.request("left", milk) is None  # the view changed: read again
        second = worker.wait("left", timeout=120)
        assert second is not None and second.tokens == ("mjolk",)
        assert worker.latest("left") is second
        stats = worker.stats()
    assert (stats.requests, stats.cache_hits, stats.reads, stats.errors, stats.pending) == (3, 1, 2, 0, 0)
    assert stats.mean_ms > 0 and stats.max_ms >= stats.mean_ms
    assert oat.min() == 20 and oat.max() == 255  # the caller's crop is not touched


def test_worker_keeps_only_the_latest_unread_view_per_roi(engine: OcrEngine) -> None:
    views = [label(w) for w in ("ARLA", "GARANT", "MJOLK")]  # pairwise distinct views (ARLA ~ OATLY is not)
    with OcrWorker(engine=engine) as worker:
        for v in views:
            worker.request("shelf", v)
        result = worker.wait("shelf", timeout=120)
        stats = worker.stats()
    assert result is not None and result.tokens == ("mjolk",)
    # The first view may have started before the others arrived; at least one was superseded.
    assert stats.superseded + stats.reads == 3 and stats.superseded >= 1


def test_a_pending_view_is_dropped_when_the_view_returns_to_the_one_being_read(engine: OcrEngine) -> None:
    arla, garant = label("ARLA"), label("GARANT")
    with OcrWorker(engine=engine) as worker:
        worker.request("shelf", arla)
        deadline = time.monotonic() + 60
        while worker.stats().pending and time.monotonic() < deadline:  # wait until ARLA is being read
            time.sleep(0.001)
        worker.request("shelf", garant)  # queued behind the running read
        worker.request("shelf", arla)  # ...but the shelf shows ARLA again: GARANT is stale
        result = worker.wait("shelf", timeout=120)
        stats = worker.stats()
    assert result is not None and result.tokens == ("arla",)
    assert (stats.requests, stats.reads, stats.superseded, stats.pending) == (3, 1, 1, 0)


class BrokenEngine(OcrEngine):
    """An engine whose model fails at run time (a corrupt install), to check failures are counted."""

    def read(self, image_bgr: np.ndarray) -> OcrResult:
        raise BackendError("OCR model failed", hint="reinstall rapidocr-onnxruntime")


def test_worker_counts_failed_reads_and_keeps_serving() -> None:
    with OcrWorker(engine=BrokenEngine()) as worker:
        assert worker.request("r", label("X")) is None
        result = worker.wait("r", timeout=10)
        assert result is not None and result.error is not None and "OCR model failed" in result.error
        assert result.tokens == ()
        assert worker.stats().errors == 1
        with pytest.raises(ImageError, match="ROI 'r'"):
            worker.request("r", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(BackendError, match="closed"):
        worker.request("r", label("X"))


def test_worker_from_config_section() -> None:
    from edge.core.config import OcrSettings
    from edge.text.ocr.worker import start_worker

    with start_worker(OcrSettings(det_side=320, change_threshold=0.05)) as worker:
        assert getattr(worker.engine, "det_limit_side_len", None) == 320 and worker.change_threshold == 0.05
        worker.request("r", label("ARLA"))
        result = worker.wait("r", timeout=120)
    assert result is not None and result.tokens == ("arla",)


def test_process_engine_reads_in_a_child_and_restarts_after_it_dies() -> None:
    import os
    import signal

    from edge.text.ocr.process import ProcessOcrEngine

    with ProcessOcrEngine(threads=1) as engine:
        assert engine.read(label("ARLA", "GRADDFIL")).tokens == ("arla", "graddfil")
        child = engine._proc
        assert child is not None and child.pid != os.getpid()
        with pytest.raises(ImageError, match="OCR needs a non-empty BGR uint8 image array"):
            engine.read(np.zeros((0, 0, 3), np.uint8))  # checked here, the child is not bothered
        assert engine._proc is child
        os.kill(child.pid, signal.SIGKILL)
        child.join(5)
        # the dead child is noticed and replaced: this read runs in a fresh one
        assert engine.read(label("BRAVO")).tokens == ("bravo",)
        assert engine._proc is not child
    assert engine._proc is None  # closed with the context


def test_process_engine_names_a_child_that_dies_mid_read(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    from edge.text.ocr.process import ProcessOcrEngine

    with ProcessOcrEngine(threads=1) as engine:
        engine.read(label("ARLA"))
        child = engine._proc
        assert child is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(5)
        monkeypatch.setattr(child, "is_alive", lambda: True)  # it dies after the liveness check
        with pytest.raises(BackendError, match=r"OCR process exited \(exit code -9\) while reading"):
            engine.read(label("ARLA"))
        assert engine._proc is None  # forgotten: the next read starts a fresh child
        assert engine.read(label("ARLA")).tokens == ("arla",)
