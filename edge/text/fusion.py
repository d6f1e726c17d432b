"""Fusing label text with vision: the one fusion rule, its stored weights, and the runtime's reranker.

``fused(p) = image(p) + w_ocr * ocr(p) + w_text * text(p)``, where ``image(p)`` is the
product's image score, ``ocr(p)`` the coverage score of the words read off the crop
(:mod:`edge.text.profiles`) and ``text(p)`` an optional semantic score a caller supplies (the
multimodal benchmark: cosine of MiniLM embeddings, clipped at 0). The frame loop and
``storelens calibrate --fusion`` use the OCR term only. The weights are fitted by
:mod:`edge.text.calibration` and stored with the catalog. Without text evidence every text
term is 0, so the fused ranking is exactly the image ranking: fusion is never worse than
image-only on unreadable products.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.core.errors import CatalogError
from edge.core.types import Candidate
from edge.text.ocr.engine import OcrResult
from edge.text.ocr.worker import OcrWorker
from edge.text.profiles import TextProfiles

if TYPE_CHECKING:
    from edge.catalog.db import Catalog

WEIGHTS_META = "fusion_weights"  # catalog meta key of the stored weights


@dataclass(frozen=True, kw_only=True)
class FusionWeights:
    """Weights of the fusion rule, fitted by ``storelens calibrate`` and stored beside the catalog."""

    ocr: float = 0.0
    text: float = 0.0
    fitted_on: str = ""  # what labelled data chose them (never the evaluation split)
    metrics: dict[str, float] = field(default_factory=dict)  # image-only vs fused recall@1 on that data

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> FusionWeights:
        """Parse stored weights; unreadable or negative ones are a :class:`CatalogError` (re-run calibrate)."""
        try:
            d: dict[str, Any] = json.loads(raw)
            w = cls(ocr=float(d["ocr"]), text=float(d["text"]), fitted_on=str(d.get("fitted_on", "")),
                    metrics={str(k): float(v) for k, v in d.get("metrics", {}).items()})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CatalogError(f"stored fusion weights are unreadable ({e})",
                               hint="re-run `storelens calibrate` to fit them again") from e
        if w.ocr < 0 or w.text < 0:
            raise CatalogError(f"fusion weights must be >= 0, got ocr={w.ocr} text={w.text}",
                               hint="re-run `storelens calibrate`")
        return w


def save_weights(catalog: Catalog, weights: FusionWeights) -> None:
    """Store the weights with the catalog (its ``meta`` table, next to the unknown-product thresholds)."""
    catalog.set_meta(WEIGHTS_META, weights.to_json())


def load_weights(catalog: Catalog) -> FusionWeights:
    """The stored weights, or zero weights (image only) when ``storelens calibrate`` has not fitted any."""
    raw = catalog.get_meta(WEIGHTS_META)
    if not raw:
        return FusionWeights(fitted_on="not calibrated: image only")
    return FusionWeights.from_json(raw)


def fuse(image: np.ndarray, *, ocr: np.ndarray | None = None, text: np.ndarray | None = None,
         weights: FusionWeights) -> np.ndarray:
    """Fused scores (..., P) = image + w_ocr * ocr + w_text * text; missing evidence adds nothing."""
    out = np.array(image, np.float32, copy=True)
    if ocr is not None and weights.ocr:
        out += weights.ocr * np.asarray(ocr, np.float32)
    if text is not None and weights.text:
        out += weights.text * np.asarray(text, np.float32)
    return out


def fuse_candidates(image: Sequence[Candidate], *, skus: Sequence[str], names: Mapping[str, str],
                    ocr: np.ndarray | None = None, text: np.ndarray | None = None,
                    weights: FusionWeights, k: int | None = None) -> list[Candidate]:
    """Re-rank an image shortlist with text evidence over ``skus`` (the profiles' order).

    A product that the text evidence names but that is not on the image shortlist enters it
    with the shortlist's lowest image score (it was at most that similar). With no evidence
    the output is the input shortlist, in the same order with the same scores.
    """
    image_score = {c.sku: c.score for c in image}
    name_of = {**names, **{c.sku: c.name for c in image}}
    floor = min(image_score.values(), default=0.0)
    evidence = np.zeros(len(skus), np.float32)
    if ocr is not None and weights.ocr:
        evidence += weights.ocr * np.asarray(ocr, np.float32)
    if text is not None and weights.text:
        evidence += weights.text * np.asarray(text, np.float32)
    bonus = {s: float(e) for s, e in zip(skus, evidence, strict=True) if e > 0}
    if not bonus:
        return list(image[:k] if k else image)
    pool = dict.fromkeys([c.sku for c in image] + [s for s in skus if s in bonus])
    fused = [Candidate(sku=s, name=name_of.get(s, s), score=image_score.get(s, floor) + bonus.get(s, 0.0))
             for s in pool]
    fused.sort(key=lambda c: -c.score)  # stable: ties keep the image order
    return fused[:k] if k else fused


class LabelTextReranker:
    """The runtime's one call for label text: OCR off the capture thread, then fuse if there is a reading.

    ``rerank_read(roi, crop, candidates)`` asks the :class:`~edge.text.ocr.worker.OcrWorker` for the
    reading of this view once (never blocks; the first frames of a new view have none yet), re-ranks
    the image candidates with :func:`fuse_candidates` and returns the reading too, so the caller
    knows whether one is still pending. No reading, or no word that matches the catalog, returns
    the image candidates unchanged.

    The word profiles and names are one snapshot, replaced by :meth:`swap_text` (after a catalog
    reload) under the same lock that scoring takes: a reading scored against the old profiles is
    never fused against the new ones (its scores have the old product count).
    """

    def __init__(self, *, worker: OcrWorker, profiles: TextProfiles, weights: FusionWeights,
                 names: Mapping[str, str] | None = None) -> None:
        self.worker = worker
        self.weights = weights
        self.fused = 0  # decisions where text evidence was added
        self._lock = threading.Lock()
        self._text: tuple[TextProfiles, dict[str, str]] = (profiles, dict(names or {}))
        self._memo: tuple[OcrResult, TextProfiles, np.ndarray] | None = None

    @property
    def profiles(self) -> TextProfiles:
        return self._text[0]

    @property
    def names(self) -> dict[str, str]:
        return self._text[1]

    def swap_text(self, profiles: TextProfiles, names: Mapping[str, str] | None = None) -> None:
        """New word profiles and names (a reloaded catalog), with the memo of scored readings dropped."""
        with self._lock:
            self._text = (profiles, dict(names if names is not None else self._text[1]))
            self._memo = None

    def rerank(self, roi: str, crop: np.ndarray, candidates: Sequence[Candidate], *,
               k: int | None = None) -> list[Candidate]:
        return self.rerank_read(roi, crop, candidates, k=k)[0]

    def rerank_read(self, roi: str, crop: np.ndarray, candidates: Sequence[Candidate], *,
                    k: int | None = None) -> tuple[list[Candidate], OcrResult | None]:
        """The fused candidates and this view's reading (None while it is still being read)."""
        reading = self.worker.request(roi, crop)
        return self.fuse_reading(reading, candidates, k=k), reading

    def fuse_reading(self, reading: OcrResult | None, candidates: Sequence[Candidate], *,
                     k: int | None = None) -> list[Candidate]:
        """Re-rank ``candidates`` with an already obtained reading (the OCR worker is not asked again)."""
        if reading is None or not reading.tokens or not self.weights.ocr:
            return list(candidates)
        with self._lock:
            profiles, names = self._text
            if self._memo is None or self._memo[0] is not reading or self._memo[1] is not profiles:
                self._memo = (reading, profiles, profiles.score(reading.tokens))  # scored once per profiles
            ranked = fuse_candidates(candidates, skus=profiles.skus, names=names, ocr=self._memo[2],
                                     weights=self.weights, k=k or len(candidates))
            self.fused += int(ranked != list(candidates))
        return ranked
