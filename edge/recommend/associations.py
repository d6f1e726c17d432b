"""Bought together: item-item association scores fitted from decayed basket counts.

The basket statistics of :mod:`edge.recommend.baskets` are the Gram matrix ``G = X^T X`` (item
counts on the diagonal, pair counts off it). Three scores are fitted from it:

- ``ease``: the closed-form item-item linear model EASE (Steck, 2019): ``P = (G + λI)^-1``,
  ``B_ij = -P_ij / P_jj``, ``B_jj = 0``; a basket's score for ``j`` is ``Σ_{i in basket} B_ij``.
  It needs nothing but ``G``, and unlike raw counts it explains staples away (they co-occur
  with everything), which lifts the long tail. It costs an n×n inverse.
- ``pmi`` (catalogs too large for that inverse): pointwise mutual information with shrinkage
  for rare pairs, ``log(C_ij·N / (C_i·C_j)) · C_ij / (C_ij + β)``.
- ``cooccurrence``: raw pair counts ``C_ij`` (the baseline).

Each product keeps its top ``neighbours`` scores; a basket's scores are the sum of its products'
rows, clipped at 0, plus a popularity prior ``γ · support_j / max(support)``, which lets a
staple outrank a weak association.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edge.core.config import RecommendSettings
from edge.core.errors import InputError
from edge.recommend.baskets import Cooccurrence

Method = Literal["auto", "ease", "pmi", "cooccurrence"]
Source = Literal["together", "popular", "similar"]
_DEFAULTS = RecommendSettings()


@dataclass(frozen=True, slots=True)
class AssociationModel:
    """Fitted item-item scores: per product its ``neighbours`` best (index, score), -1 padded."""

    method: str
    skus: tuple[str, ...]
    index: dict[str, int]
    support: np.ndarray  # (n,) decayed baskets holding each product
    by_popularity: np.ndarray  # product indices, most bought first
    nbr_idx: np.ndarray  # (n, M) int64
    nbr_score: np.ndarray  # (n, M) float32
    version: int
    prior: np.ndarray  # (n,) popularity_prior * support / max(support), added to association scores

    @classmethod
    def fit(cls, co: Cooccurrence, *, method: Method = _DEFAULTS.method, ease_lambda: float = _DEFAULTS.ease_lambda,
            shrinkage: float = _DEFAULTS.shrinkage, ease_max_items: int = _DEFAULTS.ease_max_items,
            neighbours: int = _DEFAULTS.neighbours, popularity_prior: float = 0.0) -> AssociationModel:
        """Solve the chosen score from the counts (``auto``: ease when the catalog is small enough).

        Defaults are the ``[recommend]`` settings' defaults, except ``popularity_prior``: 0 fits
        the association alone (the served model passes the configured prior).
        """
        n = co.n_items
        if method == "auto":
            method = "ease" if n <= ease_max_items else "pmi"
        if method == "ease":
            if n > ease_max_items:
                raise InputError(f"EASE on {n} products needs an {n}x{n} inverse (ease_max_items={ease_max_items})",
                                 hint="set recommend.method = 'pmi' or 'auto' for catalogs this large")
            rows, cols, vals = _dense_rows(_ease(co.dense(), ease_lambda), neighbours)
        elif method == "pmi":
            rows, cols, vals = co.pair_i, co.pair_j, _pmi(co, shrinkage)
        elif method == "cooccurrence":
            rows, cols, vals = co.pair_i, co.pair_j, co.pair_weight
        else:
            raise InputError(f"unknown recommendation method {method!r}", hint="use auto, ease, pmi or cooccurrence")
        nbr_idx, nbr_score = _top_per_row(n, rows, cols, vals, neighbours)
        order = np.lexsort((np.arange(n), -co.item_weight)) if n else np.zeros(0, dtype=np.int64)
        return cls(method=method, skus=co.skus, index={s: i for i, s in enumerate(co.skus)},
                   support=co.item_weight.copy(), by_popularity=order, nbr_idx=nbr_idx, nbr_score=nbr_score,
                   version=co.version,
                   prior=popularity_prior * co.item_weight / max(float(co.item_weight.max(initial=0.0)), 1e-12))

    def _association(self, context: Sequence[str], min_support: float) -> np.ndarray:
        """Summed neighbour scores of the context's products, clipped at 0, zero on the context itself."""
        acc = np.zeros(len(self.skus), dtype=np.float64)
        for s in context:
            i = self.index.get(s)
            if i is not None and self.support[i] >= min_support:
                m = self.nbr_idx[i] >= 0
                acc[self.nbr_idx[i][m]] += self.nbr_score[i][m]
        acc[[self.index[s] for s in context if s in self.index]] = 0.0
        return np.maximum(acc, 0.0)

    def together(self, context: Sequence[str], k: int, *, min_support: float = 0.0,
                 allowed: Callable[[str], bool] | None = None) -> list[tuple[str, float]]:
        """Top ``k`` products with a positive association score to the basket ``context`` (not in it)."""
        acc = self._association(context, min_support)
        cand = np.flatnonzero(acc > 0)
        cand = cand[np.lexsort((-self.support[cand], -acc[cand]))]
        return self._take(((int(j), float(acc[j])) for j in cand), k, allowed)

    def rank(self, context: Sequence[str], k: int, *, min_support: float = 0.0,
             allowed: Callable[[str], bool] | None = None) -> list[tuple[str, float, Source]]:
        """The served order: ``association + popularity_prior * support / max(support)``, best first.

        The prior lets a much-bought product outrank a weak
        association; with prior 0 this is the association list followed by popular products.
        ``source`` is "together" where the association is positive, else "popular".
        """
        if len(self.skus) == 0:
            return []
        acc = self._association(context, min_support)
        # exact candidates: every associated product, and the most popular ones (best prior otherwise)
        cand = np.union1d(np.flatnonzero(acc > 0), self.by_popularity[: k + len(context) + 64])
        skip = [self.index[s] for s in context if s in self.index]
        if skip:
            cand = cand[~np.isin(cand, skip)]
        score = acc + self.prior
        order = cand[np.lexsort((-self.support[cand], -score[cand]))]
        out: list[tuple[str, float, Source]] = []
        for j in order:
            if len(out) >= k:
                break
            if allowed is None or allowed(self.skus[j]):
                out.append((self.skus[j], float(score[j]), "together" if acc[j] > 0 else "popular"))
        return out

    def popular(self, k: int, *, exclude: Sequence[str] = (),
                allowed: Callable[[str], bool] | None = None) -> list[tuple[str, float]]:
        """The ``k`` most bought products (decayed counts), leaving out ``exclude``."""
        skip = set(exclude)
        it = ((int(j), float(self.support[j])) for j in self.by_popularity if self.skus[j] not in skip)
        return self._take(it, k, allowed)

    def _take(self, scored: Any, k: int, allowed: Callable[[str], bool] | None) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for j, score in scored:
            if len(out) >= k:
                break
            if allowed is None or allowed(self.skus[j]):
                out.append((self.skus[j], score))
        return out


def _ease(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE weights from the Gram matrix: ``B = I - P / diag(P)`` with ``P = (G + λI)^-1``, zero diagonal."""
    if gram.shape[0] == 0:
        return gram
    from threadpoolctl import threadpool_limits

    # One BLAS thread: on a 2-core box busy with inference, multi-threaded OpenBLAS spin-waits, so a
    # small inverse takes far longer and steals the second core from capture and inference.
    with threadpool_limits(limits=1, user_api="blas"):
        p = np.linalg.inv(gram + lam * np.eye(gram.shape[0]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def _pmi(co: Cooccurrence, shrinkage: float) -> np.ndarray:
    """Shrunk PMI per listed pair: ``log(C_ij N / (C_i C_j)) * C_ij / (C_ij + shrinkage)``."""
    c = co.pair_weight
    ci, cj = co.item_weight[co.pair_i], co.item_weight[co.pair_j]
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(c * co.total / (ci * cj))
    pmi[~np.isfinite(pmi)] = 0.0
    return pmi * c / (c + shrinkage) if shrinkage > 0 else pmi


def _dense_rows(b: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``m`` largest off-diagonal entries of each row of a dense matrix, as (row, col, value)."""
    n = b.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    b = b.copy()
    np.fill_diagonal(b, -np.inf)
    m = min(m, n - 1)
    if m <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    cols = np.argpartition(-b, m - 1, axis=1)[:, :m] if m < n else np.argsort(-b, axis=1)[:, :m]
    rows = np.repeat(np.arange(n), m)
    cols = cols.ravel()
    return rows, cols, b[rows, cols]


def _top_per_row(n: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                 m: int) -> tuple[np.ndarray, np.ndarray]:
    """Group (row, col, value) triples by row and keep each row's ``m`` best, as padded arrays."""
    width = max(1, min(m, n))
    idx = np.full((n, width), -1, dtype=np.int64)
    score = np.zeros((n, width), dtype=np.float32)
    if len(rows) == 0:
        return idx, score
    order = np.lexsort((-vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.searchsorted(rows, np.arange(n))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < width
    idx[rows[keep], rank[keep]] = cols[keep]
    score[rows[keep], rank[keep]] = vals[keep]
    return idx, score
