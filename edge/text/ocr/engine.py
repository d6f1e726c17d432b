"""The OCR engine: rapidocr-onnxruntime (PP-OCR models shipped in the wheel) and what one read returns."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.core.config import OcrSettings
from edge.core.errors import BackendError, ImageError
from edge.text.normalise import tokens

_DEFAULTS = OcrSettings()
OCR_NICE = 10  # added to the OCR thread / process niceness: capture and embedding come first


@dataclass(frozen=True, slots=True)
class OcrLine:
    """One text line the recogniser read, with its confidence (0-1)."""

    text: str
    score: float


@dataclass(frozen=True, slots=True)
class OcrResult:
    """What one OCR pass read off one crop."""

    lines: tuple[OcrLine, ...]
    latency_ms: float
    error: str | None = None

    @property
    def text(self) -> str:
        return " ".join(line.text for line in self.lines)

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(tokens(self.text))

    def to_dict(self) -> dict[str, Any]:
        return {"lines": [[ln.text, round(ln.score, 4)] for ln in self.lines],
                "latency_ms": round(self.latency_ms, 2), "error": self.error}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OcrResult:
        return cls(lines=tuple(OcrLine(str(t), float(s)) for t, s in d.get("lines", [])),
                   latency_ms=float(d.get("latency_ms", 0.0)), error=d.get("error"))



class OcrEngine:
    """rapidocr-onnxruntime (PP-OCRv4 det + rec, shipped in the wheel), loaded on first use.

    ``det_limit_side_len`` is the short side the detector works at (``ocr.det_side``): the
    library's larger default upsamples small crops and dominates latency. ``min_score`` drops
    lines the recogniser is unsure of.
    """

    def __init__(self, *, threads: int = _DEFAULTS.threads, min_score: float = _DEFAULTS.min_score,
                 det_limit_side_len: int = _DEFAULTS.det_side) -> None:
        if threads < 1:
            raise BackendError(f"OCR threads must be >= 1, got {threads}", hint="set ocr.threads to 1 or more")
        self.threads = threads
        self.min_score = min_score
        self.det_limit_side_len = det_limit_side_len
        self._ocr: Any = None
        self._lock = threading.Lock()  # one read at a time per engine (onnxruntime sessions are shared)

    def _load(self) -> Any:
        if self._ocr is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as e:  # pragma: no cover - the package is a hard dependency
                raise BackendError("rapidocr-onnxruntime is not installed",
                                   hint="pip install rapidocr-onnxruntime (see pyproject.toml)") from e
            self._ocr = RapidOCR(intra_op_num_threads=self.threads, inter_op_num_threads=1,
                                 text_score=self.min_score, det_limit_side_len=self.det_limit_side_len)
        return self._ocr

    @staticmethod
    def check_image(image_bgr: object) -> None:
        """Raise :class:`ImageError` unless ``image_bgr`` is a non-empty uint8 image array."""
        if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim not in (2, 3) or image_bgr.size == 0:
            raise ImageError("OCR needs a non-empty BGR uint8 image array",
                             hint="pass the ROI crop as decoded by edge.models.preprocess.read_image / the capture")
        if image_bgr.dtype != np.uint8:
            raise ImageError(f"OCR needs uint8 pixels, got {image_bgr.dtype}", hint="pass the decoded frame crop")

    def read(self, image_bgr: np.ndarray) -> OcrResult:
        """Read the text lines of one BGR uint8 crop (synchronous; call it off the capture thread)."""
        self.check_image(image_bgr)
        with self._lock:
            ocr = self._load()
            t0 = time.perf_counter()
            result, _ = ocr(image_bgr)
            ms = (time.perf_counter() - t0) * 1000.0
        lines = tuple(OcrLine(str(r[1]), float(r[2])) for r in (result or []) if str(r[1]).strip())
        return OcrResult(lines=lines, latency_ms=ms)
