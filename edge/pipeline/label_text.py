"""Label text in the frame loop: each embedded crop's reading fused in, and late readings voted.

OCR runs on its own thread (:class:`~edge.text.ocr.worker.OcrWorker`), far slower than an
embedding, so the first frames of a new view have no reading yet. The gate then stops embedding
the unchanged view after a few frames, usually before OCR has finished; without a second look,
label text could never change a kiosk decision. So a crop voted without its reading is kept
(``pending``), and while the view lasts the loop asks :meth:`LabelTextVotes.late` on the frames
the gate skips: once the reading is there, the kept crop's image candidates are fused with it and
voted again (up to ``decision.window`` times).

The worker is asked once per crop (its ``requests`` count crops, not calls). Fusion goes through
:class:`~edge.text.fusion.LabelTextReranker`, whose word profiles are swapped with the catalog on
reload under its own lock.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge.core.config import Settings
from edge.core.types import Candidate
from edge.text.fusion import LabelTextReranker

log = logging.getLogger("storelens.pipeline")


class LabelTextVotes:
    """The loop's label-text step for every region; a no-op without a reranker (image only)."""

    def __init__(self, reranker: LabelTextReranker | None, *, revotes: int) -> None:
        self.reranker = reranker
        self.revotes = revotes  # how many skipped frames vote again once a late reading arrives
        self._pending: dict[str, tuple[np.ndarray, list[Candidate], int]] = {}

    def fuse(self, key: str, crop: np.ndarray, cands: list[Candidate]) -> list[Candidate]:
        """One embedded crop's candidates with its view's reading fused in (unchanged while none is read yet)."""
        if self.reranker is None:
            return cands
        fused, reading = self.reranker.rerank_read(key, crop, cands)
        if reading is None:  # still reading: this view votes again once it is read
            self._pending[key] = (crop.copy(), list(cands), self.revotes)
        return fused

    def waiting(self, key: str) -> bool:
        return key in self._pending

    def forget(self, key: str) -> None:
        """A new view began: the old view's pending reading no longer matters."""
        self._pending.pop(key, None)

    def late(self, key: str) -> list[Candidate] | None:
        """The kept crop's fused candidates once its reading has arrived (None while it is still being read)."""
        if self.reranker is None or key not in self._pending:
            return None
        crop, image_cands, left = self._pending[key]
        if (reading := self.reranker.worker.request(key, crop)) is None:
            return None
        if left <= 1:
            del self._pending[key]
        else:
            self._pending[key] = (crop, image_cands, left - 1)
        return self.reranker.fuse_reading(reading, image_cands)


def label_reranker(settings: Settings, store: Any) -> LabelTextReranker | None:
    """OCR + fusion for the frame loop, or None (said in the log) when it would not change a ranking.

    Fusion is off unless ``storelens calibrate --fusion`` stored a non-zero OCR weight with the
    catalog: reading labels costs CPU, and with weight 0 it cannot change a decision.
    """
    if not settings.ocr.enabled:
        log.info("label text (OCR) off: ocr.enabled = false")
        return None
    from edge.text.fusion import load_weights
    from edge.text.ocr.worker import start_worker
    from edge.text.profiles import catalog_profiles

    weights = load_weights(store.catalog)
    if not weights.ocr:
        log.info("label text (OCR) off: no fitted OCR weight; run `storelens calibrate LABELLED --fusion`",
                 extra={"fitted_on": weights.fitted_on})
        return None
    names = {p.sku: p.name for p in store.catalog.products()}
    log.info("label text (OCR) on", extra={"w_ocr": weights.ocr, "w_text": weights.text})
    return LabelTextReranker(worker=start_worker(settings.ocr), profiles=catalog_profiles(store.catalog),
                             weights=weights, names=names)


def reload_label_text(rt: Any, matcher: Any) -> None:
    """On ``reload`` of ``rt`` (a :class:`~edge.pipeline.loop.Runtime`, which imports this module): the fusion
    weights stored with the catalog now, as ``storelens calibrate --fusion`` left them.

    A runtime started before any weight was fitted has no reranker; once a non-zero OCR weight is
    stored, reload starts one (as a restart would), so the README's "reload picks up stored
    calibration" holds for label text too. A running reranker takes the new weights.
    """
    if not hasattr(matcher, "catalog"):
        return
    from edge.text.fusion import load_weights

    if rt.reranker is not None:
        rt.reranker.weights = load_weights(matcher.catalog)
        log.info("label text (OCR) weights reloaded", extra={"w_ocr": rt.reranker.weights.ocr})
        return
    reranker = label_reranker(rt.settings, matcher)
    if reranker is not None:
        with rt.models_paused():  # between two batches: the loop sees no reranker, or the whole one
            rt.reranker = reranker
            rt._text.reranker = reranker  # the loop's label-text step (LabelTextVotes, this module)
