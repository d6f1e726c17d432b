"""From raw index hits and lexical matches to ranked products: aggregation and fusion rules.

Pure functions over keys and scores, so the rules are testable and measurable on their own
(:class:`edge.catalog.store.Store` wires them to the catalog and the indexes).

- **Image aggregation**: a product has several reference vectors, so a query's top vector
  hits contain a product several times. ``max`` keeps its best hit; ``mean`` averages its
  top ``MEAN_TOP`` hits (fewer when it has fewer photos), a missing hit counting as the lowest
  score retrieved (a product matched by one lucky photo is not rewarded over one matched by all
  its photos). ``mean`` is the default (``catalog.image_aggregate``).
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

from edge.core.types import Candidate

Aggregate = Literal["max", "mean"]
DEFAULT_K = 5  # products a search returns when the caller does not say
MEAN_TOP = 3
RRF_K = 60


@dataclass(frozen=True)
class Hits:
    """Raw vector hits of a batch search: ``keys``/``scores`` are (N, K), ``counts`` (N,) valid columns."""

    keys: np.ndarray
    scores: np.ndarray
    counts: np.ndarray


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


def product_scores(hits: Hits, *, rule: Aggregate = "max",
                   vectors_per_key: Mapping[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(products, scores)``: the distinct keys hit (ascending) and a (queries, products) score matrix.

    ``scores[i, j]`` aggregates query i's hits of ``products[j]`` by ``rule`` (see the module
    docstring); -inf where query i did not hit it. ``vectors_per_key`` (for ``mean``): how many
    reference vectors each product has, so a product with one photo averages over one hit
    instead of being padded with low scores. Hits need not be sorted.
    """
    n_rows, width = hits.keys.shape[0], hits.keys.shape[1] if hits.keys.ndim == 2 else 0
    counts = np.asarray(hits.counts, np.int64)
    if rule == "max" and n_rows and width and hits.keys.strides[0] == 0 and np.all(counts == width):
        # every query scored against the same keys (a broadcast row, e.g. a whole gallery): group columns once
        products, cols = np.unique(hits.keys[0], return_inverse=True)
        order = np.argsort(cols, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(cols[order]) != 0])
        return products, np.maximum.reduceat(hits.scores[:, order].astype(np.float64), starts, axis=1)
    if n_rows and np.all(counts == width):  # every column valid (dense scores): no mask to build
        rows = np.repeat(np.arange(n_rows), width)
        keys, scores = hits.keys.reshape(-1), hits.scores.reshape(-1).astype(np.float64)
    else:
        valid = np.arange(width)[None, :] < counts[:, None]
        rows, keys, scores = np.nonzero(valid)[0], hits.keys[valid], hits.scores[valid].astype(np.float64)
    products, cols = np.unique(keys, return_inverse=True)
    out = np.full((n_rows, len(products)), -np.inf)
    if rule == "max":
        np.maximum.at(out, (rows, cols), scores)
        return products, out
    per_key = vectors_per_key or {}
    m = np.array([max(1, min(MEAN_TOP, int(per_key.get(int(p), MEAN_TOP)))) for p in products], np.int64)
    order = np.lexsort((-scores, cols, rows))  # each (query, product) group best first
    rows, cols, scores = rows[order], cols[order], scores[order]
    first = np.ones(len(rows), bool)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    starts = np.flatnonzero(first)
    rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.append(starts, len(rows))))
    keep = rank < m[cols]
    total, taken = np.zeros_like(out), np.zeros(out.shape, np.int64)
    np.add.at(total, (rows[keep], cols[keep]), scores[keep])
    np.add.at(taken, (rows[keep], cols[keep]), 1)
    floor = np.full(n_rows, np.inf)  # a missing hit counts as the lowest score the query retrieved
    np.minimum.at(floor, rows, scores)
    for pad in range(MEAN_TOP):  # one floor at a time, in the order a list mean would add them
        short = (taken > 0) & (taken + pad < m[None, :])
        total[short] += np.broadcast_to(floor[:, None], total.shape)[short]
    hit = taken > 0
    out[hit] = (total / m[None, :])[hit]
    return products, out


def aggregate_hits(hits: Hits, *, k: int, rule: Aggregate = "max",
                   vectors_per_key: Mapping[int, int] | None = None) -> list[list[tuple[int, float]]]:
    """Per query: up to ``k`` (product key, score) best first (ties: lower key first), by :func:`product_scores`."""
    products, scores = product_scores(hits, rule=rule, vectors_per_key=vectors_per_key)
    out: list[list[tuple[int, float]]] = []
    for row in scores:
        hit = np.flatnonzero(np.isfinite(row))
        best = hit[np.lexsort((products[hit], -row[hit]))][:k]
        out.append([(int(products[j]), float(row[j])) for j in best])
    return out


def rrf(rankings: Mapping[str, Sequence[tuple[int, float]]], *, weights: Mapping[str, float] | None = None,
        k: int | None = None, rrf_k: int = RRF_K) -> list[tuple[int, float, dict[str, float]]]:
    """Reciprocal rank fusion of several (key, raw score) rankings, best first.

    Returns (key, fused score, {modality: raw score}) so callers keep every modality's evidence.
    ``rrf_k``: the constant of ``w / (rrf_k + rank)`` (shopper text search uses a smaller one).
    """
    fused: dict[int, float] = {}
    raw: dict[int, dict[str, float]] = {}
    for name, ranking in rankings.items():
        w = 1.0 if weights is None else float(weights.get(name, 1.0))
        for rank, (key, score) in enumerate(ranking, start=1):
            fused[key] = fused.get(key, 0.0) + w / (rrf_k + rank)
            raw.setdefault(key, {})[name] = float(score)
    order = sorted(fused, key=lambda key: (-fused[key], key))
    return [(key, fused[key], raw[key]) for key in order[: k if k is not None else len(order)]]
