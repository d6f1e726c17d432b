"""From raw index hits and lexical matches to ranked products: aggregation and fusion rules.

Pure functions over keys and scores, so the rules are testable and measurable on their own
(:class:`edge.catalog.store.Store` wires them to the catalog and the indexes).

- **Image aggregation**: a product has several reference vectors, so a query's top vector
  hits contain a product several times. ``max`` keeps its best hit; ``mean`` averages its
  top ``MEAN_TOP`` hits (fewer when it has fewer photos), a missing hit counting as the lowest
  score retrieved (a product matched by one lucky photo is not rewarded over one matched by all
  its photos). Measured with
  ``benchmarks/aggregation.py`` on Grocery Store val (81 products, 20 photos + iconic each):
  macro top-1 0.434 mean vs 0.424 max, top-5 0.786 vs 0.768; ``mean`` is the default.
- **Fusion**: reciprocal rank fusion (Cormack et al., 2009): ``sum_m w_m / (RRF_K + rank_m)``
  over the modalities' rankings (BM25, text embedding, image). It needs no score calibration
  between BM25 (unbounded) and cosines, and a product found by several modalities rises.
  Each :class:`Ranked` keeps the per-modality raw scores, so a later fusion rule (OCR words,
  learned weights) can use them without re-running searches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edge.catalog.index import Hits
from edge.core.types import Candidate

Aggregate = Literal["max", "mean"]
MEAN_TOP = 3
RRF_K = 60


@dataclass(frozen=True, kw_only=True)
class Ranked:
    """One ranked product: fused ``score`` plus each modality's raw score (``image``, ``bm25``, ``text``)."""

    sku: str
    name: str
    score: float
    scores: Mapping[str, float] = field(default_factory=dict)

    def candidate(self) -> Candidate:
        return Candidate(sku=self.sku, name=self.name, score=self.score)

    def to_dict(self) -> dict[str, object]:
        return {"sku": self.sku, "name": self.name, "score": round(float(self.score), 4),
                "scores": {k: round(float(v), 4) for k, v in self.scores.items()}}


def aggregate_hits(hits: Hits, *, k: int, rule: Aggregate = "max",
                   vectors_per_key: Mapping[int, int] | None = None) -> list[list[tuple[int, float]]]:
    """Per query: up to ``k`` (product key, score) best first, from that query's vector hits.

    ``vectors_per_key`` (for ``mean``): how many reference vectors each product has, so a
    product with one photo averages over one hit instead of being padded with low scores.
    """
    out: list[list[tuple[int, float]]] = []
    for row in range(len(hits.counts)):
        n = int(hits.counts[row])
        keys = hits.keys[row, :n].tolist()
        scores = hits.scores[row, :n].tolist()
        out.append(_aggregate_row(keys, scores, k=k, rule=rule, vectors_per_key=vectors_per_key or {}))
    return out


def _aggregate_row(keys: Sequence[int], scores: Sequence[float], *, k: int, rule: Aggregate,
                   vectors_per_key: Mapping[int, int]) -> list[tuple[int, float]]:
    per: dict[int, list[float]] = {}
    for key, s in zip(keys, scores, strict=True):  # hits arrive best first
        per.setdefault(int(key), []).append(float(s))
    if rule == "max":
        agg = {key: ss[0] for key, ss in per.items()}
    else:
        floor = float(scores[-1]) if len(scores) else 0.0
        agg = {}
        for key, ss in per.items():
            m = max(1, min(MEAN_TOP, int(vectors_per_key.get(key, MEAN_TOP))))
            agg[key] = float(np.mean((ss + [floor] * m)[:m]))
    return sorted(agg.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def rrf(rankings: Mapping[str, Sequence[tuple[int, float]]], *, weights: Mapping[str, float] | None = None,
        k: int | None = None) -> list[tuple[int, float, dict[str, float]]]:
    """Reciprocal rank fusion of several (key, raw score) rankings, best first.

    Returns (key, fused score, {modality: raw score}) so callers keep every modality's evidence.
    """
    fused: dict[int, float] = {}
    raw: dict[int, dict[str, float]] = {}
    for name, ranking in rankings.items():
        w = 1.0 if weights is None else float(weights.get(name, 1.0))
        for rank, (key, score) in enumerate(ranking, start=1):
            fused[key] = fused.get(key, 0.0) + w / (RRF_K + rank)
            raw.setdefault(key, {})[name] = float(score)
    order = sorted(fused, key=lambda key: (-fused[key], key))
    return [(key, fused[key], raw[key]) for key in order[: k if k is not None else len(order)]]
