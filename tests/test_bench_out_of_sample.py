"""The out-of-sample machinery of the benchmarks (issue 31): the index graph chosen on one seed and reported
on another, and the learning stream split by capture session (real photos, the export carve's sessions)."""

from __future__ import annotations

import pytest

from benchmarks import index as bench_index
from tests.conftest import shared_dir


def test_sweep_graph_chooses_on_one_seed_and_reports_on_another(capsys: pytest.CaptureFixture[str]) -> None:
    saved: list[dict] = []
    out = bench_index.sweep_graph(1500, [(8, 32), (16, 64)], [16, 32], choose_seed=1, report_seed=2, threads=1,
                                  dim=32, on_row=lambda o: saved.append(dict(o)))
    assert {r["data_seed"] for r in out["choice_rows"]} == {1}
    assert {(r["connectivity"], r["expansion_add"]) for r in out["choice_rows"]} == {(8, 32), (16, 64)}
    fit = [r for r in out["choice_rows"] if r["recall10"] >= bench_index.RECALL_TARGET
           and r["bytes_per_vector"] <= 32 + 200]
    best = max(fit, key=lambda r: r["qps_vs_numpy"])
    assert out["chosen"] == {k: best[k] for k in ("connectivity", "expansion_add", "expansion_search")}
    usearch = [r for r in out["report_rows"] if r["engine"] == "usearch"]
    assert {r["data_seed"] for r in out["report_rows"]} == {2}  # reported on vectors the choice never saw
    assert usearch[0]["expansion_search"] == out["chosen"]["expansion_search"]
    assert all((r["connectivity"], r["expansion_add"]) == (best["connectivity"], best["expansion_add"])
               for r in usearch)
    faiss_rows = [r for r in out["report_rows"] if r["engine"] == "faiss-hnsw"]
    if not faiss_rows:  # faiss is the bench extra: without it the row is skipped with a printed reason
        assert "FAISS row skipped: faiss is not importable" in capsys.readouterr().out
    else:
        assert faiss_rows[0]["connectivity"] == best["connectivity"] and "qps_exact_numpy_adjacent" in faiss_rows[0]
    assert saved and "report_rows" in saved[-1]


def test_the_learning_stream_split_by_session_keeps_sessions_whole() -> None:
    """No session has photos on both sides: every scored photo is below the link threshold to every
    teaching photo of its product (the carve's sessions are connected components of that link)."""
    import numpy as np

    from benchmarks.learning import SESSION_THRESHOLD, session_order
    from export.carve import thumbnails
    from export.data import Sample, read_split

    root = shared_dir() / "datasets" / "grocery-store"
    samples = [s for s in read_split(root / "val.txt") if s.label in (0, 1, 2, 5)]  # 4 products of val
    order, n_teach = session_order(samples, seed=0)  # type: ignore[arg-type]  # Items and Samples alike
    assert sorted(order.tolist()) == list(range(len(samples))) and 0 < n_teach < len(samples)
    thumbs = thumbnails([Sample(path=s.path, label=s.label, coarse=s.coarse, group=s.group) for s in samples])
    teach, scored = order[:n_teach], order[n_teach:]
    for i in scored:
        same = [t for t in teach if samples[t].label == samples[i].label]
        assert all(float(thumbs[i] @ thumbs[t]) <= SESSION_THRESHOLD for t in same), samples[i].path
    assert {samples[i].label for i in scored} <= {samples[i].label for i in range(len(samples))}
    assert np.unique([samples[i].label for i in teach]).size >= 2
