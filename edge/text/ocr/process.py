"""OCR in a child process, so label reading never slows the frame loop.

On its own thread, rapidocr still runs its pre/post-processing in Python under the GIL, which
slows a frame loop that embeds every frame (``benchmarks/ocr_fps.py``). :class:`ProcessOcrEngine` has
the :class:`~edge.text.ocr.engine.OcrEngine` interface (``read(crop) -> OcrResult``) but runs the engine
in a spawned, niced child: the calling thread only waits on a pipe. A child that dies is
reported as a failed read (clear error) and started again on the next read.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from edge.core.config import OcrSettings
from edge.core.errors import BackendError
from edge.text.ocr.engine import OCR_NICE, OcrEngine, OcrResult

log = logging.getLogger("storelens.ocr")
_DEFAULTS = OcrSettings()
READ_TIMEOUT_S = 60.0  # a read that takes longer is a failed read (the child is restarted)


def _serve(conn: Connection, threads: int, min_score: float, det_side: int, nice: int) -> None:
    """Child process: read crops from ``conn`` until ``None``; answer ("ok", result) or ("error", text)."""
    if nice > 0 and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError:
            pass
    engine = OcrEngine(threads=threads, min_score=min_score, det_limit_side_len=det_side)
    while True:
        try:
            crop = conn.recv()
        except EOFError:
            return
        if crop is None:
            return
        try:
            conn.send(("ok", engine.read(crop).to_dict()))
        except Exception as e:  # the parent turns it into a failed read; the child keeps serving
            conn.send(("error", f"{type(e).__name__}: {e}"))


class ProcessOcrEngine:
    """:class:`OcrEngine` in a spawned child process (started on the first read)."""

    def __init__(self, *, threads: int = _DEFAULTS.threads, min_score: float = _DEFAULTS.min_score,
                 det_limit_side_len: int = _DEFAULTS.det_side, nice: int = OCR_NICE,
                 timeout_s: float = READ_TIMEOUT_S) -> None:
        if threads < 1:
            raise BackendError(f"OCR threads must be >= 1, got {threads}", hint="set ocr.threads to 1 or more")
        self.threads, self.min_score, self.det_limit_side_len = threads, min_score, det_limit_side_len
        self.nice, self.timeout_s = nice, timeout_s
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        ctx = mp.get_context("spawn")  # never fork a process that holds onnxruntime threads
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, name="storelens-ocr",
                                 args=(child, self.threads, self.min_score, self.det_limit_side_len, self.nice),
                                 daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        return parent

    def read(self, image_bgr: np.ndarray) -> OcrResult:
        """Read one BGR uint8 crop in the child (blocks the calling thread only, not the GIL)."""
        OcrEngine.check_image(image_bgr)
        with self._lock:
            alive = self._conn is not None and self._proc is not None and self._proc.is_alive()
            conn = self._conn if alive and self._conn is not None else self._start()
            try:
                conn.send(np.ascontiguousarray(image_bgr))
                if not conn.poll(self.timeout_s):
                    raise BackendError(f"OCR process gave no answer in {self.timeout_s:.0f} s",
                                       hint="the crop may be huge; lower ocr.det_side or check the box's load")
                status, payload = conn.recv()
            except (EOFError, OSError, BackendError) as e:
                code = self._proc.exitcode if self._proc is not None else None
                self._stop(kill=True)
                if isinstance(e, BackendError):
                    raise
                raise BackendError(f"OCR process exited (exit code {code}) while reading",
                                   hint="it restarts on the next read; if it keeps failing run "
                                   "`storelens ocr IMAGE` to see the error") from e
        if status != "ok":
            raise BackendError(f"OCR failed in the OCR process: {payload}")
        return OcrResult.from_dict(payload)

    def _stop(self, *, kill: bool) -> None:
        if self._conn is not None:
            if not kill:
                try:
                    self._conn.send(None)
                except OSError:
                    pass
            self._conn.close()
        if self._proc is not None:
            self._proc.join(0 if kill else 5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        self._proc, self._conn = None, None

    def close(self) -> None:
        """Stop the child (idempotent)."""
        with self._lock:
            self._stop(kill=False)

    def __enter__(self) -> ProcessOcrEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
