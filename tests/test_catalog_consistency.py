"""Catalog and index agree: a writer killed between commit and publish, corrupt index files and sidecars,
a catalog without the embeddings to rebuild from, and a write that changes no vector."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge.catalog import index as ix
from edge.catalog.store import Store
from edge.core.errors import CatalogError
from tests.runtime_helpers import TinyOnnxEncoder, product_image

ROOT = Path(__file__).resolve().parents[1]


def open_store(data: Path, tiny_onnx: Path) -> Store:
    return Store(data_dir=data, image_encoder=TinyOnnxEncoder(tiny_onnx), dtype="f32")


def enrolled(data: Path, tiny_onnx: Path, skus: tuple[str, ...] = ("RED", "GREEN")) -> Store:
    store = open_store(data, tiny_onnx)
    for sku in skus:
        store.enroll(sku, name=sku.title(), images=[product_image(sku), product_image(sku, shift=6)])
    return store


def top_sku(store: Store, sku: str) -> str | None:
    ranked = store.search_image([product_image(sku, shift=3)], k=1)[0]
    return ranked[0].sku if ranked else None


def kill_writer_between_commit_and_publish(data: Path, tiny_onnx: Path, sku: str) -> None:
    """Another process enrolls ``sku``; it is SIGKILLed after SQLite committed, before the index is published."""
    marker = data.parent / "committed"
    proc = subprocess.Popen([sys.executable, "-m", "tests.catalog_chaos", str(data), str(tiny_onnx), sku,
                             str(marker)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), proc.communicate()[0].decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_writer_killed_between_commit_and_publish_is_repaired_on_open(
        tmp_path: Path, tiny_onnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    enrolled(data, tiny_onnx).close()
    kill_writer_between_commit_and_publish(data, tiny_onnx, "BLUE")
    side = ix.read_meta(data, "image")
    assert side is not None and side.catalog_version == 2  # the index still reflects the catalog before BLUE
    with caplog.at_level(logging.WARNING, logger="storelens.store"):
        store = open_store(data, tiny_onnx)
    assert store.catalog.get("BLUE") is not None and store.catalog_version == 3
    meta = store.index_meta("image")
    assert meta is not None and (meta.catalog_version, meta.products, meta.vectors) == (3, 3, 6)
    assert top_sku(store, "BLUE") == "BLUE"  # the committed product is searchable
    assert store.repairs.rebuilds == 1 and "catalog version 2" in (store.repairs.to_dict()["last_rebuild"] or "")
    assert any("rebuilding it from the stored embeddings" in r.getMessage() for r in caplog.records)
    store.close()
    again = open_store(data, tiny_onnx)  # repaired for good: the next open checks and finds nothing to do
    assert again.repairs.rebuilds == 0
    again.close()


def test_reload_of_an_open_store_notices_the_divergence(tmp_path: Path, tiny_onnx: Path) -> None:
    data = tmp_path / "data"
    store = enrolled(data, tiny_onnx)
    kill_writer_between_commit_and_publish(data, tiny_onnx, "BLUE")
    store.reload()  # the sidecar still names the same file: only the catalog version moved
    assert store.repairs.rebuilds == 1 and top_sku(store, "BLUE") == "BLUE"
    store.close()


def test_corrupt_index_file_is_rebuilt_from_stored_embeddings(tmp_path: Path, tiny_onnx: Path) -> None:
    data = tmp_path / "data"
    enrolled(data, tiny_onnx).close()
    meta = ix.read_meta(data, "image")
    assert meta is not None
    f = data / meta.file
    raw = bytearray(f.read_bytes())
    raw[64:200] = bytes(b ^ 0xFF for b in raw[64:200])  # flipped bits USearch itself would load silently
    f.write_bytes(bytes(raw))
    with pytest.raises(CatalogError, match="is corrupt"):
        ix.VectorIndex.open(data, "image", fingerprint=meta.fingerprint, ndim=16, dtype="f32")
    store = open_store(data, tiny_onnx)
    assert store.repairs.rebuilds == 1 and "corrupt" in (store.repairs.to_dict()["last_rebuild"] or "")
    assert top_sku(store, "RED") == "RED" and top_sku(store, "GREEN") == "GREEN"
    store.close()


def test_truncated_index_file_is_rebuilt(tmp_path: Path, tiny_onnx: Path) -> None:
    data = tmp_path / "data"
    enrolled(data, tiny_onnx).close()
    meta = ix.read_meta(data, "image")
    assert meta is not None
    f = data / meta.file
    f.write_bytes(f.read_bytes()[: meta.file_bytes // 2])
    store = open_store(data, tiny_onnx)
    assert store.repairs.rebuilds == 1 and top_sku(store, "GREEN") == "GREEN"
    store.close()


@pytest.mark.parametrize("sidecar", ["{", "[1, 2]", '{"modality": "image"}', "null"],
                         ids=["not-json", "a-list", "missing-fields", "null"])
def test_damaged_sidecar_is_a_catalog_error_and_rebuilt(tmp_path: Path, tiny_onnx: Path, sidecar: str) -> None:
    data = tmp_path / "data"
    enrolled(data, tiny_onnx).close()
    (data / "image.index.json").write_text(sidecar)
    with pytest.raises(CatalogError, match="sidecar"):
        ix.read_meta(data, "image")
    store = open_store(data, tiny_onnx)
    assert store.repairs.rebuilds == 1 and top_sku(store, "RED") == "RED"
    assert json.loads((data / "image.index.json").read_text())["catalog_version"] == store.catalog_version
    store.close()


def test_no_stored_embeddings_to_rebuild_from_is_refused_with_a_fix(tmp_path: Path, tiny_onnx: Path) -> None:
    data = tmp_path / "data"
    enrolled(data, tiny_onnx).close()
    kill_writer_between_commit_and_publish(data, tiny_onnx, "BLUE")
    with sqlite3.connect(data / "catalog.db") as db:  # the embeddings are gone (say, a hand-edited database)
        db.execute("DELETE FROM vectors")
    with pytest.raises(CatalogError, match="no image embeddings from encoder") as e:
        open_store(data, tiny_onnx)
    assert "storelens catalog reindex --reembed" in str(e.value)


def test_a_write_that_changes_no_vector_keeps_the_index_current(tmp_path: Path, tiny_onnx: Path) -> None:
    data = tmp_path / "data"
    store = enrolled(data, tiny_onnx)
    store.writer.set_product_text("RED", "ocr", "tomato soup")  # bumps the catalog version, no vector changes
    meta = ix.read_meta(data, "image")
    assert meta is not None and meta.catalog_version == store.catalog_version
    store.close()
    again = open_store(data, tiny_onnx)
    assert again.repairs.rebuilds == 0
    again.close()


def test_index_without_the_catalog_vectors_it_claims_is_rebuilt(tmp_path: Path, tiny_onnx: Path,
                                                                 rng: np.random.Generator) -> None:
    """Same version, other counts (an index file copied from another store): rebuilt from the catalog."""
    data = tmp_path / "data"
    enrolled(data, tiny_onnx).close()
    meta = ix.read_meta(data, "image")
    assert meta is not None
    index = ix.new_usearch(meta)
    v = rng.standard_normal((3, 16)).astype(np.float32)
    index.add(np.array([1, 1, 2], np.uint64), ix.quantize(v, dtype="f32"))
    ix.publish(data, index, ix.IndexMeta.from_dict({**meta.to_dict(), "products": 2}))
    store = open_store(data, tiny_onnx)
    assert store.repairs.rebuilds == 1 and "holds 3 vectors" in (store.repairs.to_dict()["last_rebuild"] or "")
    store.close()
