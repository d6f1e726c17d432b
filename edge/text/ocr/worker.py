"""OCR off the capture thread: one background worker, one cached reading per ROI view.

Packaged products differ by a word on the label more than by shape or colour, so the
runtime reads text off steady ROI crops and :mod:`edge.text.fusion` turns the words into a
per-product score. OCR costs far more than an embedding, so :class:`OcrWorker` runs the
engine on its own thread, never the caller's. ``request(roi, crop)`` never blocks: it returns
the cached reading while that ROI's view is unchanged, otherwise schedules one read (latest
view wins) and returns ``None``. A frame without a reading has no text evidence, which leaves
the image ranking unchanged.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from edge.core.config import OcrSettings
from edge.core.errors import BackendError, ImageError
from edge.text.ocr.engine import OCR_NICE, OcrResult

log = logging.getLogger("storelens.ocr")
_DEFAULTS = OcrSettings()


def view_signature(crop: np.ndarray) -> np.ndarray:
    """A 16x16 grey thumbnail (0-1): two views are 'the same' when these barely differ.

    It runs on every frame with OCR on, so the crop is first subsampled to ~64 px by striding
    (an area resize of the whole crop is a visible share of the frame loop's time).
    """
    step = max(1, min(crop.shape[:2]) // 64)
    crop = np.ascontiguousarray(crop[::step, ::step])
    grey = crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    return cv2.resize(grey, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def same_view(a: np.ndarray, b: np.ndarray, threshold: float) -> bool:
    return a.shape == b.shape and float(np.mean(np.abs(a - b))) <= threshold


@dataclass(frozen=True, slots=True)
class OcrStats:
    """Counters of an :class:`OcrWorker` (all since start); ``stats`` messages publish them."""

    requests: int
    cache_hits: int
    reads: int
    superseded: int
    errors: int
    pending: int
    mean_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__slots__}


class TextReader(Protocol):
    """What :class:`OcrWorker` runs: :class:`OcrEngine` here, or in a child process (edge.text.ocr.process)."""

    def read(self, image_bgr: np.ndarray) -> OcrResult: ...


@dataclass
class _Roi:
    signature: np.ndarray | None = None  # view the cached result was read from
    result: OcrResult | None = None
    pending: tuple[np.ndarray, np.ndarray] | None = None  # (signature, crop) not started yet
    running: np.ndarray | None = None  # signature being read now
    done: threading.Event = field(default_factory=threading.Event)


class OcrWorker:
    """Reads ROI crops on a background thread; one cached reading per ROI while its view is unchanged.

    The runtime calls :meth:`request` for each gated, steady ROI crop. The call copies the
    crop (inputs are never mutated or kept by reference) and returns at once.
    """

    def __init__(self, *, engine: TextReader, change_threshold: float = _DEFAULTS.change_threshold,
                 nice: int = OCR_NICE) -> None:
        self.engine = engine
        self.change_threshold = change_threshold
        self.nice = nice  # the OCR thread yields the CPU to capture and embedding (Linux per-thread nice)
        self._rois: dict[str, _Roi] = {}
        self._cv = threading.Condition()
        self._closed = False
        self._n = {"requests": 0, "cache_hits": 0, "reads": 0, "superseded": 0, "errors": 0}
        self._total_ms = 0.0
        self._max_ms = 0.0
        self._thread = threading.Thread(target=self._loop, name="storelens-ocr", daemon=True)
        self._thread.start()

    def request(self, roi: str, crop: np.ndarray) -> OcrResult | None:
        """The reading for this view of ``roi`` if there is one; else schedule a read and return ``None``."""
        if not isinstance(crop, np.ndarray) or crop.ndim not in (2, 3) or crop.size == 0 or crop.dtype != np.uint8:
            raise ImageError(f"OCR request for ROI {roi!r} needs a non-empty uint8 image array",
                             hint="pass the BGR crop of the ROI as the capture decoded it")
        sig = view_signature(crop)
        with self._cv:
            if self._closed:
                raise BackendError("OCR worker is closed", hint="create a new OcrWorker")
            self._n["requests"] += 1
            st = self._rois.setdefault(roi, _Roi())
            if st.result is not None and st.signature is not None and same_view(st.signature, sig,
                                                                                 self.change_threshold):
                self._n["cache_hits"] += 1
                self._drop_pending(st)  # the view went back to the one already read
                return st.result
            if st.running is not None and same_view(st.running, sig, self.change_threshold):
                self._drop_pending(st)  # the view went back to the one being read
                return None  # this view is being read already
            if st.pending is not None:
                if same_view(st.pending[0], sig, self.change_threshold):
                    return None
                self._n["superseded"] += 1  # an older view never got read: the newer one replaces it
            st.pending = (sig, crop.copy())
            st.done.clear()
            self._cv.notify()
            return None

    def _drop_pending(self, st: _Roi) -> None:
        """A newer view matched what is read or being read: a different pending view is stale."""
        if st.pending is not None:
            st.pending = None
            self._n["superseded"] += 1
            if st.running is None:
                st.done.set()

    def latest(self, roi: str) -> OcrResult | None:
        """The last reading of ``roi`` whatever view it was for (None before the first)."""
        with self._cv:
            st = self._rois.get(roi)
            return st.result if st else None

    def wait(self, roi: str, timeout: float | None = None) -> OcrResult | None:
        """Block until ``roi`` has no read pending or running (benchmarks and tests; not the capture loop)."""
        with self._cv:
            st = self._rois.get(roi)
        if st is None:
            return None
        st.done.wait(timeout)
        return self.latest(roi)

    def stats(self) -> OcrStats:
        with self._cv:
            pending = sum(1 for s in self._rois.values() if s.pending is not None)
            reads = self._n["reads"]
            return OcrStats(pending=pending, mean_ms=self._total_ms / reads if reads else 0.0,
                            max_ms=self._max_ms, **self._n)

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)
        close = getattr(self.engine, "close", None)
        if callable(close):  # a process engine stops its child
            close()

    def __enter__(self) -> OcrWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_job(self) -> tuple[str, _Roi, np.ndarray, np.ndarray] | None:
        with self._cv:
            while not self._closed:
                for roi, st in self._rois.items():
                    if st.pending is not None:
                        sig, crop = st.pending
                        st.pending, st.running = None, sig
                        return roi, st, sig, crop
                self._cv.wait()
            return None

    def _lower_priority(self) -> None:
        """Nice only this thread (onnxruntime with one thread runs OCR on it), so fps does not drop."""
        if self.nice <= 0 or not hasattr(os, "setpriority"):
            return
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
        except OSError as e:  # not fatal: OCR still runs off the capture thread
            log.warning("could not lower the OCR thread priority", extra={"error": str(e)})

    def _loop(self) -> None:
        self._lower_priority()
        while (job := self._next_job()) is not None:
            roi, st, sig, crop = job
            try:
                result = self.engine.read(crop)
            except Exception as e:  # a failed read is counted, logged and cached for this view only
                log.warning("OCR read failed", extra={"roi": roi, "error": str(e)})
                result = OcrResult(lines=(), latency_ms=0.0, error=str(e))
                failed = True
            else:
                failed = False
            with self._cv:
                self._n["errors" if failed else "reads"] += 1
                if not failed:
                    self._total_ms += result.latency_ms
                    self._max_ms = max(self._max_ms, result.latency_ms)
                st.result, st.signature, st.running = result, sig, None
                if st.pending is None:
                    st.done.set()


def start_worker(settings: OcrSettings) -> OcrWorker:
    """The runtime's OCR worker as the ``[ocr]`` config section describes it.

    The engine runs in a child process (:mod:`edge.text.ocr.process`): on a thread, OCR's Python
    work holds the GIL and slows the frame loop. Models load on the first read.
    """
    from edge.text.ocr.process import ProcessOcrEngine

    engine = ProcessOcrEngine(threads=settings.threads, min_score=settings.min_score,
                              det_limit_side_len=settings.det_side)
    return OcrWorker(engine=engine, change_threshold=settings.change_threshold)
