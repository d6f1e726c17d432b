"""Product ranking rules tried by :mod:`benchmarks.learning_replica`: one query's photo hits -> product scores.

A rule sees one query's hits (best first: score, product key, whether the photo was learned, and for
a learned photo its best cosine to another product's photos when it was learned) and how many photos
of each source every product has, and returns ``{product key: score}``. A missing hit counts as the
lowest score the query retrieved (the floor), as in :func:`edge.catalog.ranking.product_scores`.

Families (names as in docs/learning-ranking-study.md):

- ``mean_topK``: the mean of a product's top K photos of any source; ``mean_top3`` is the runtime's rule.
- ``mean_top3_learned+b``: learned hits get +b inside the mean of the top 3.
- ``per_source_cat3_learnedL_marginM``: max(catalog mean of top 3, learned mean of top L minus M).
- ``lse_topK_TT``: T*log(mean over the top K of exp(s/T)): the mean for large T, the max for small T.
- ``blend_aA_marginM``: cat3 + A*max(0, learned best - M - cat3).
- ``lookalike_bB_mM``: per_source (learned top 1, no margin) after discounting each learned hit by B
  times its photo's best cosine to another product's photos, plus M.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge.catalog.ranking import MEAN_TOP


@dataclass(frozen=True)
class QueryHits:
    """One query's photo hits, best first, and the gallery's photo counts per product (all, catalog, learned)."""

    scores: np.ndarray  # float64
    keys: np.ndarray  # int product keys
    learned: np.ndarray  # bool: a learned photo (else an enrolled catalog photo)
    lookalike: np.ndarray  # float64: a learned photo's best cosine to another product's photos (0 for catalog)
    photos: Mapping[int, int]
    catalog_photos: Mapping[int, int]
    learned_photos: Mapping[int, int]

    @property
    def floor(self) -> float:
        return float(self.scores.min())

    def by_product(self, scores: np.ndarray | None = None) -> dict[int, list[tuple[float, bool]]]:
        """Product key -> its (score, learned) hits, best first (``scores`` replaces the hit scores)."""
        out: dict[int, list[tuple[float, bool]]] = {}
        s = self.scores if scores is None else scores
        for sc, key, learned in zip(s.tolist(), self.keys.tolist(), self.learned.tolist(), strict=True):
            out.setdefault(int(key), []).append((float(sc), bool(learned)))
        return out


Rule = Callable[[QueryHits], dict[int, float]]


def padded(vals: Sequence[float], m_top: int, photos: int, floor: float) -> list[float]:
    """The best ``min(m_top, photos)`` (at least 1) of ``vals``, padded with ``floor`` when fewer were hit."""
    m = max(1, min(m_top, photos))
    top = sorted(vals, reverse=True)[:m]
    return top + [floor] * (m - len(top))


def padded_mean(vals: Sequence[float], m_top: int, photos: int, floor: float) -> float:
    """Mean of :func:`padded` (the runtime's floor-padded mean of the top 3 with ``m_top`` = 3)."""
    v = padded(vals, m_top, photos, floor)
    return sum(v) / len(v)


def mean_top(m_top: int = MEAN_TOP, learned_bonus: float = 0.0) -> Rule:
    """Mean of a product's top ``m_top`` hits of any source; learned hits + ``learned_bonus``."""
    def rule(q: QueryHits) -> dict[int, float]:
        return {p: padded_mean([s + (learned_bonus if ll else 0.0) for s, ll in hs], m_top, q.photos[p], q.floor)
                for p, hs in q.by_product().items()}
    return rule


def _per_source(q: QueryHits, scores: np.ndarray | None, m_cat: int, m_learned: int,
                margin: float) -> dict[int, float]:
    floor = q.floor if scores is None else float(scores.min())
    out: dict[int, float] = {}
    for p, hs in q.by_product(scores).items():
        best = -math.inf
        for learned, counts, m_top, off in ((False, q.catalog_photos, m_cat, 0.0),
                                             (True, q.learned_photos, m_learned, margin)):
            vals = [s for s, ll in hs if ll == learned]
            if vals:
                best = max(best, padded_mean(vals, m_top, counts.get(p, 0), floor) - off)
        out[p] = best
    return out


def per_source(m_cat: int = MEAN_TOP, margin: float = 0.0, m_learned: int = 1) -> Rule:
    """max(catalog mean of the top ``m_cat``, learned mean of the top ``m_learned`` minus ``margin``)."""
    def rule(q: QueryHits) -> dict[int, float]:
        return _per_source(q, None, m_cat, m_learned, margin)
    return rule


def lse(temp: float, m_top: int = MEAN_TOP) -> Rule:
    """``temp`` * log(mean over the floor-padded top ``m_top`` of exp(s / ``temp``))."""
    def rule(q: QueryHits) -> dict[int, float]:
        out: dict[int, float] = {}
        for p, hs in q.by_product().items():
            v = np.array(padded([s for s, _ in hs], m_top, q.photos[p], q.floor))
            mx = v.max()
            out[p] = float(mx + temp * np.log(np.mean(np.exp((v - mx) / temp))))
        return out
    return rule


def blend(alpha: float, margin: float = 0.0) -> Rule:
    """Catalog mean of the top 3 + ``alpha`` * max(0, learned best - ``margin`` - that mean)."""
    def rule(q: QueryHits) -> dict[int, float]:
        out: dict[int, float] = {}
        for p, hs in q.by_product().items():
            cat = padded_mean([s for s, ll in hs if not ll], MEAN_TOP, q.catalog_photos.get(p, 0), q.floor)
            learned = [s for s, ll in hs if ll]
            out[p] = cat + alpha * (max(0.0, max(learned) - margin - cat) if learned else 0.0)
        return out
    return rule


def lookalike(beta: float, margin: float = 0.0) -> Rule:
    """:func:`per_source` (learned top 1) after each learned hit loses ``beta`` * its look-alike cosine + ``margin``."""
    def rule(q: QueryHits) -> dict[int, float]:
        return _per_source(q, q.scores - np.where(q.learned, beta * q.lookalike + margin, 0.0), MEAN_TOP, 1, 0.0)
    return rule


def variants() -> dict[str, Rule]:
    """Every variant of the study, by name (the explore grid and the carve-selection grid together)."""
    v: dict[str, Rule] = {f"mean_top{m}": mean_top(m) for m in (1, 2, 3, 4)}
    v |= {f"mean_top3_learned+{b}": mean_top(3, b) for b in (0.02, 0.05, 0.1)}
    v |= {f"per_source_cat3_learned1_margin{m}": per_source(3, m, 1)
          for m in (0.0, 0.02, 0.03, 0.05, 0.08, 0.1, 0.12, 0.15)}
    v |= {f"per_source_cat3_learned2_margin{m}": per_source(3, m, 2) for m in (0.0, 0.05, 0.1)}
    v |= {f"lse_top3_T{t}": lse(t, 3) for t in (0.01, 0.02, 0.05, 0.1)}
    v |= {f"lse_top5_T{t}": lse(t, 5) for t in (0.02, 0.05)}
    v |= {f"blend_a{a}_margin{m}": blend(a, m) for a in (0.25, 0.5, 0.75) for m in (0.0, 0.03, 0.05, 0.08)}
    v |= {f"lookalike_b{b}_m{m}": lookalike(b, m) for b in (0.1, 0.15, 0.2, 0.3) for m in (0.0, 0.03)}
    return v
