"""benchmarks.accuracy scores products as the runtime does (its image aggregation) unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks import accuracy
from edge.core.config import CatalogSettings


def unit_at(cos: float, k: int) -> np.ndarray:
    """A unit vector with cosine ``cos`` to e0, its remainder along axis ``k``."""
    v = np.zeros(8, np.float32)
    v[0], v[k] = cos, np.sqrt(1 - cos**2)
    return v


def items(labels: list[int]) -> list[accuracy.Item]:
    return [accuracy.Item(path=Path(f"{i}.jpg"), label=lab, coarse=0, group="g") for i, lab in enumerate(labels)]


def test_default_scoring_is_the_runtimes_aggregation_and_max_is_a_flag() -> None:
    # product 1: one lucky photo very close to the query, two far; product 2: all three photos close
    g = np.stack([unit_at(0.99, 1), unit_at(0.1, 2), unit_at(0.1, 3),
                  unit_at(0.9, 4), unit_at(0.9, 5), unit_at(0.9, 6)])
    g_items = items([1, 1, 1, 2, 2, 2])
    q, q_items = unit_at(1.0, 7)[None, :], items([2])
    assert CatalogSettings().image_aggregate == accuracy.RUNTIME_AGGREGATE == "mean"
    assert accuracy.evaluate(q, q_items, g, g_items)["macro_r1"] == 1.0  # mean of top 3: product 2
    assert accuracy.evaluate(q, q_items, g, g_items, rule="max")["macro_r1"] == 0.0  # best photo: product 1
    args = accuracy.build_parser().parse_args(["--root", ".", "--gallery", "g.txt", "--queries", "q.txt"])
    assert args.aggregate == accuracy.RUNTIME_AGGREGATE
    assert accuracy.build_parser().parse_args(["--root", ".", "--gallery", "g", "--queries", "q",
                                               "--aggregate", "max"]).aggregate == "max"


def test_seed_spread_is_reported_where_recorded() -> None:
    spread = accuracy.seed_spread("a0d9f1cc9eab0aae", {})
    assert spread is not None and spread["val_macro_r1"] == {"seed 0": 0.6528, "seed 1": 0.5886}
    assert accuracy.seed_spread("unknown", {}) is None
    recorded = {"training": {"seed_spread": {"val_macro_r1": {"seed 0": 0.7, "seed 1": 0.68}, "source": "x"}}}
    assert accuracy.seed_spread("unknown", recorded) == recorded["training"]["seed_spread"]
