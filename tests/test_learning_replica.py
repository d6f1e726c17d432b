"""The replica's ranking rules on one tiny synthetic query (no photos, no encoder)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks._replica_rules import QueryHits, blend, lookalike, lse, mean_top, per_source, variants
from edge.catalog.ranking import Hits, product_scores

# products 1, 2, 3; product 2's hit at 0.8 is a learned photo (look-alike cosine 0.5); the floor is 0.5
Q = QueryHits(scores=np.array([0.9, 0.8, 0.7, 0.6, 0.5]), keys=np.array([1, 2, 1, 2, 3]),
              learned=np.array([False, True, False, False, False]), lookalike=np.array([0.0, 0.5, 0.0, 0.0, 0.0]),
              photos={1: 3, 2: 4, 3: 1}, catalog_photos={1: 3, 2: 3, 3: 1}, learned_photos={2: 1})


def test_mean_top3_is_the_runtime_rule() -> None:
    got = mean_top(3)(Q)
    assert got == pytest.approx({1: (0.9 + 0.7 + 0.5) / 3, 2: (0.8 + 0.6 + 0.5) / 3, 3: 0.5})
    products, scores = product_scores(Hits(keys=Q.keys[None, :].astype(np.uint64), scores=Q.scores[None, :],
                                           counts=np.array([5])), rule="mean", vectors_per_key=Q.photos)
    assert {int(p): float(s) for p, s in zip(products, scores[0], strict=True)} == got


def test_learned_photos_ranked_on_their_own() -> None:
    cat2 = (0.6 + 0.5 + 0.5) / 3
    assert per_source(3, 0.05, 1)(Q) == pytest.approx({1: 0.7, 2: 0.75, 3: 0.5})
    assert blend(0.5, 0.05)(Q) == pytest.approx({1: 0.7, 2: cat2 + 0.5 * (0.75 - cat2), 3: 0.5})
    assert lookalike(0.2, 0.0)(Q) == pytest.approx({1: 0.7, 2: 0.7, 3: 0.5})  # 0.8 - 0.2 * 0.5
    assert mean_top(3, 0.1)(Q)[2] == pytest.approx((0.9 + 0.6 + 0.5) / 3)


def test_lse_runs_from_max_to_mean() -> None:
    assert lse(1e-4, 3)(Q)[1] == pytest.approx(0.9, abs=1e-3)
    assert lse(100.0, 3)(Q)[1] == pytest.approx(0.7, abs=1e-3)


def test_variant_names() -> None:
    v = variants()
    assert {"mean_top3", "per_source_cat3_learned1_margin0.05", "lse_top5_T0.05", "blend_a0.75_margin0.05",
            "lookalike_b0.15_m0.0", "mean_top3_learned+0.02"} <= set(v)
