"""benchmarks.accuracy scores products as the runtime does (its image aggregation) unless told otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def floats_in(obj: Any) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in floats_in(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in floats_in(v)]
    return [float(obj)] if isinstance(obj, float) else []


def test_seed_spread_figures_are_the_training_reports_figures() -> None:
    """Every recorded seed figure is read back from the training report it names (not copied into this test)."""
    repo = Path(__file__).resolve().parents[1]
    for fingerprint, spread in accuracy.SEED_SPREAD.items():
        folder = repo / Path(spread["source"].split(",")[0].strip()).parent
        sources = [folder / Path(name.strip()).name for name in spread["source"].split(",")]
        reported = {round(x, 4) for src in sources for x in floats_in(json.loads(src.read_text()))}
        figures = [v for key in ("val_macro_r1", "carve_macro_r1") for v in spread[key].values()]
        assert len(figures) == 4 and set(figures) <= reported, (fingerprint, set(figures) - reported)
        assert accuracy.seed_spread(fingerprint, {}) == spread


def test_seed_spread_is_reported_where_recorded() -> None:
    assert accuracy.seed_spread("unknown", {}) is None
    recorded = {"training": {"seed_spread": {"val_macro_r1": {"seed 0": 0.7, "seed 1": 0.68}, "source": "x"}}}
    assert accuracy.seed_spread("unknown", recorded) == recorded["training"]["seed_spread"]
