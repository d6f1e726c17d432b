"""edge.catalog.index: real USearch indexes on disk, sidecars, mismatch errors, atomic swaps, the writer lock."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge.catalog import index as ix
from edge.core.errors import CatalogError, IndexMismatchError


def unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build(directory: Path, keys: np.ndarray, vecs: np.ndarray, *, dtype: str = "f32", fp: str = "enc-a",
          version: int = 1) -> ix.IndexMeta:
    meta = ix.IndexMeta(modality="image", ndim=vecs.shape[1], dtype=dtype, fingerprint=fp, catalog_version=version,
                        vectors=0, products=len(set(keys.tolist())), file="",
                        i8_scale=ix.choose_i8_scale(vecs) if dtype == "i8" else 1.0)
    index = ix.new_usearch(meta)
    index.add(keys.astype(np.uint64), ix.quantize(vecs, dtype=dtype, i8_scale=meta.i8_scale))
    return ix.publish(directory, index, meta)


@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
def test_publish_open_search_returns_exact_keys_and_sidecar(tmp_path: Path, rng: np.random.Generator,
                                                           dtype: str) -> None:
    vecs = unit(rng, 40)
    keys = np.repeat(np.arange(20), 2)  # two reference vectors per product (multi=True)
    meta = build(tmp_path, keys, vecs, dtype=dtype, version=7)
    side = json.loads((tmp_path / "image.index.json").read_text())
    assert (side["ndim"], side["dtype"], side["metric"], side["fingerprint"]) == (16, dtype, "cos", "enc-a")
    assert (side["catalog_version"], side["vectors"], side["products"]) == (7, 40, 20)
    assert (tmp_path / meta.file).is_file()

    opened = ix.VectorIndex.open(tmp_path, "image", fingerprint="enc-a", ndim=16, dtype=dtype)
    assert opened is not None and opened.size == 40
    hits = opened.search(vecs[[0, 13]], 1, exact=True)
    assert hits.keys[:, 0].tolist() == [0, 6]
    assert hits.scores[:, 0] == pytest.approx([1.0, 1.0], abs=0.01)


def test_k_larger_than_index_is_clamped(tmp_path: Path, rng: np.random.Generator) -> None:
    build(tmp_path, np.array([5, 5, 9]), unit(rng, 3))
    opened = ix.VectorIndex.open(tmp_path, "image", fingerprint="enc-a", ndim=16, dtype="f32")
    assert opened is not None
    hits = opened.search(unit(rng, 2), 50)
    assert hits.keys.shape == (2, 3)
    assert hits.counts.tolist() == [3, 3]
    assert sorted(hits.keys[0].tolist()) == [5, 5, 9]


def test_no_index_yet_opens_as_none(tmp_path: Path) -> None:
    assert ix.VectorIndex.open(tmp_path, "image", fingerprint="x", ndim=16, dtype="i8") is None


@pytest.mark.parametrize(("fp", "ndim", "dtype", "says"), [
    ("enc-b", 16, "f32", "encoder fingerprint 'enc-a' != 'enc-b'"),
    ("enc-a", 32, "f32", "dimension 16 != 32"),
    ("enc-a", 16, "i8", "dtype f32 != i8"),
])
def test_opening_with_other_encoder_dim_or_dtype_is_a_clear_error(tmp_path: Path, rng: np.random.Generator,
                                                                   fp: str, ndim: int, dtype: str, says: str) -> None:
    build(tmp_path, np.arange(4), unit(rng, 4))
    with pytest.raises(IndexMismatchError) as e:
        ix.VectorIndex.open(tmp_path, "image", fingerprint=fp, ndim=ndim, dtype=dtype)
    assert says in str(e.value)
    assert "storelens catalog reindex" in str(e.value)
    assert e.value.exit_code == 6


def test_view_serves_memory_mapped(tmp_path: Path, rng: np.random.Generator) -> None:
    vecs = unit(rng, 10)
    build(tmp_path, np.arange(10), vecs, dtype="f16")
    opened = ix.VectorIndex.open(tmp_path, "image", fingerprint="enc-a", ndim=16, dtype="f16", view=True)
    assert opened is not None
    assert opened.search(vecs[3], 1, exact=True).keys[0, 0] == 3


def test_own_i8_rounding_beats_usearch_cast_on_exact_search(rng: np.random.Generator) -> None:
    """Why edge.catalog.index quantizes itself: more top-10 neighbours agree with float32 (see module doc)."""
    centers = rng.standard_normal((50, 128)).astype(np.float32)
    x = centers[rng.integers(0, 50, 3000)] + 0.35 * rng.standard_normal((3000, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    db, q = x[:2900], x[2900:]
    truth = np.argsort(-(q @ db.T), axis=1)[:, :10]

    def recall(index: ix.Index, queries: np.ndarray) -> float:
        got = index.search(queries, 10, exact=True).keys
        return float(np.mean([len(set(got[i]) & set(truth[i])) / 10 for i in range(len(q))]))

    theirs = ix.Index(ndim=128, metric="cos", dtype="i8")
    theirs.add(np.arange(len(db)), db)
    ours = ix.Index(ndim=128, metric="cos", dtype="i8")
    scale = ix.choose_i8_scale(db)
    ours.add(np.arange(len(db)), ix.quantize(db, dtype="i8", i8_scale=scale))
    r_theirs, r_ours = recall(theirs, q), recall(ours, ix.quantize(q, dtype="i8", i8_scale=scale))
    assert r_ours > r_theirs + 0.02
    assert r_ours >= 0.95


@pytest.mark.parametrize("view", [False, True])
def test_reader_during_atomic_swaps_never_sees_a_half_written_index(tmp_path: Path, rng: np.random.Generator,
                                                                    view: bool) -> None:
    """A reader thread re-opens (loaded or memory-mapped) and searches while a writer publishes 30 generations."""
    sizes = [50 + 10 * g for g in range(31)]
    data = unit(rng, sizes[-1])
    build(tmp_path, np.arange(sizes[0]), data[: sizes[0]])
    seen: set[int] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                opened = ix.VectorIndex.open(tmp_path, "image", fingerprint="enc-a", ndim=16, dtype="f32", view=view)
                assert opened is not None
                n = opened.size
                assert n in sizes and opened.meta.vectors == n  # one whole generation, sidecar and data agree
                hits = opened.search(data[n - 1], 1, exact=True)
                assert int(hits.keys[0, 0]) == n - 1
                seen.add(n)
            except BaseException as e:  # reported below, with the thread's failure
                errors.append(e)
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        for n in sizes[1:]:
            with ix.writer_lock(tmp_path):
                build(tmp_path, np.arange(n), data[:n])
            # the next generation is published only once the reader has opened this one (while it keeps
            # re-opening): every swap happens under a reader that is busy with the files
            deadline = time.monotonic() + 10
            while n not in seen and not errors and time.monotonic() < deadline:
                time.sleep(0.001)
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert set(sizes[1:]) <= seen  # the reader really overlapped every generation
    assert len(list(tmp_path.glob("image.*.usearch"))) <= 2  # old generations pruned, previous kept


def test_writer_lock_serialises_and_times_out(tmp_path: Path) -> None:
    order: list[str] = []
    held, release, second_waiting = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with ix.writer_lock(tmp_path):
            held.set()
            assert release.wait(10)  # held until the test has seen a second writer refused and one waiting
            order.append("first-done")

    def second() -> None:
        second_waiting.set()
        with ix.writer_lock(tmp_path, timeout_s=10):
            order.append("second")

    t = threading.Thread(target=first)
    t.start()
    assert held.wait(5)
    with pytest.raises(CatalogError, match="another writer"):
        with ix.writer_lock(tmp_path, timeout_s=0.05):
            pass
    t2 = threading.Thread(target=second)
    t2.start()
    assert second_waiting.wait(5)
    assert order == []  # the waiting writer has not got in while the first holds the lock
    release.set()
    t.join()
    t2.join()
    assert order == ["first-done", "second"]


def test_importing_index_then_onnxruntime_does_not_crash() -> None:
    """usearch's compiled module before onnxruntime segfaults; edge.catalog.index loads them in the safe order."""
    import subprocess
    import sys

    code = "import edge.catalog.store, edge.catalog.index, usearch.index, onnxruntime, openvino; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout.strip()) == (0, "ok")
