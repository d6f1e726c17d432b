"""Store search over real SQLite + USearch: enroll/remove, k clamping, hybrid text, fusion, reload, writers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.catalog.ranking import Hits, aggregate_hits, rrf
from edge.catalog.store import Store
from edge.core.errors import ImageError, IndexMismatchError, InputError
from tests.encoders_for_tests import TinyImageEncoder, TrigramTextEncoder, product_image, write_jpeg

PRODUCTS = {
    "P0": ("Oat milk", "Creamy oat drink for coffee"),
    "P1": ("Tomato ketchup", "Sweet tomato sauce in a squeeze bottle"),
    "P2": ("Dark chocolate", "Seventy percent cocoa chocolate bar"),
    "P3": ("Green apples", "Granny Smith apples, crisp and sour"),
}


def open_store(data: Path, tiny_onnx: Path, **kw: object) -> Store:
    return Store(data_dir=data, image_encoder=TinyImageEncoder(tiny_onnx), text_encoder=TrigramTextEncoder(),
                 **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path, tiny_onnx: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "data", tiny_onnx)
    for i, (sku, (name, desc)) in enumerate(PRODUCTS.items()):
        s.enroll(sku, name=name, description=desc, images=[product_image(i), product_image(i, noise=12)])
    yield s
    s.close()


def test_image_search_finds_each_product_and_match_vectors_batches(store: Store, tiny_onnx: Path) -> None:
    rng = np.random.default_rng(7)
    queries = [product_image(i, noise=20, rng=rng) for i in range(4)]
    ranked = store.search_image(queries, k=2)
    assert [r[0].sku for r in ranked] == ["P0", "P1", "P2", "P3"]
    embs = TinyImageEncoder(tiny_onnx).embed(queries)
    cands = store.match_vectors(embs, 3)
    assert [c[0].sku for c in cands] == ["P0", "P1", "P2", "P3"]
    assert all(len(c) == 3 for c in cands)
    assert cands[0][0].score == pytest.approx(ranked[0][0].score, abs=1e-6)
    assert cands[0][0].score > cands[0][1].score


def test_k_larger_than_catalog_returns_every_product_once(store: Store) -> None:
    got = store.search_image([product_image(2)], k=1000)[0]
    assert sorted(r.sku for r in got) == ["P0", "P1", "P2", "P3"]
    assert len(store.search_text("chocolate", k=1000)) == 4  # BM25 hit + all text-embedding neighbours


def test_enroll_remove_then_search(store: Store) -> None:
    version = store.catalog_version
    assert store.remove("P2") is True
    assert store.remove("P2") is False
    assert store.catalog_version == version + 1
    assert store.index_meta("image").vectors == 6  # type: ignore[union-attr]
    assert store.index_meta("image").catalog_version == store.catalog_version  # type: ignore[union-attr]
    assert "P2" not in [r.sku for r in store.search_image([product_image(2)], k=4)[0]]
    assert [r.sku for r in store.search_text("chocolate", k=4)] and \
        "P2" not in [r.sku for r in store.search_text("chocolate", k=4)]
    store.enroll("P9", name="Blueberry jam", images=[product_image(9)])
    assert store.search_image([product_image(9, noise=10)], k=1)[0][0].sku == "P9"


def test_enroll_rejects_unreadable_images_and_keeps_catalog(store: Store, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    with pytest.raises(ImageError, match="no readable image for sku 'Z'"):
        store.enroll("Z", name="Zucchini", images=[bad])
    assert store.catalog.get("Z") is None
    assert store.catalog.count() == 4


def test_hybrid_text_search_fuses_bm25_and_embeddings(store: Store, tmp_path: Path, tiny_onnx: Path) -> None:
    plain = open_store(tmp_path / "data", tiny_onnx, text_search="plain")
    got = plain.search_text("tomato sauce", k=3)
    assert got[0].sku == "P1"
    assert set(got[0].scores) == {"bm25", "text"}  # found by both rankings, each raw score kept
    assert got[0].score == pytest.approx(2 / 61)  # rank 1 in both under RRF (k=60)
    # shopper search (the default): more rankings, the same answer; "tomato" also brings its synonyms
    shopper = store.search_text("tomato sauce", k=3)
    assert shopper[0].sku == "P1" and set(shopper[0].scores) == {"bm25", "every", "text", "same"}
    # a typo BM25 cannot match still finds the product through the trigram embedding
    assert plain.search_text("chocolat bar", k=1)[0].sku == "P2"
    assert store.search_text("chocolat bar", k=1)[0].sku == "P2"
    store.writer.set_product_text("P0", "ocr", "HAVREDRYCK BARISTA")
    assert plain.search_text("havredryck", k=1)[0].sku == "P0"
    assert store.search_text("havredryck", k=1)[0].sku == "P0"
    plain.close()


def test_image_and_text_together(store: Store) -> None:
    # the image looks like P3 (apples); the text says ketchup: fused, both appear, each with its evidence
    got = store.search(image=product_image(3), text="ketchup", k=2)
    assert {r.sku for r in got} == {"P1", "P3"}
    assert "image" in next(r for r in got if r.sku == "P3").scores
    assert "bm25" in next(r for r in got if r.sku == "P1").scores
    with pytest.raises(InputError, match="nothing to search for"):
        store.search(k=3)


def test_reload_picks_up_a_swap_made_by_another_store(store: Store, tmp_path: Path, tiny_onnx: Path) -> None:
    reader = open_store(tmp_path / "data", tiny_onnx)
    assert reader.reload() is False
    store.enroll("P7", name="Rye bread", images=[product_image(7)])
    assert reader.search_image([product_image(7)], k=1)[0][0].sku != "P7"  # still the old generation
    assert reader.reload() is True
    assert reader.search_image([product_image(7)], k=1)[0][0].sku == "P7"
    reader.close()


def test_concurrent_writers_do_not_lose_products(tmp_path: Path, tiny_onnx: Path) -> None:
    """Two stores (as two processes would) enrolling at once: the lock queues them, nothing is lost."""
    stores = [open_store(tmp_path / "data", tiny_onnx) for _ in range(2)]
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            for j in range(5):
                stores[w].enroll(f"W{w}-{j}", name=f"item {w} {j}", images=[product_image(20 + 10 * w + j)])
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    final = open_store(tmp_path / "data", tiny_onnx)
    assert final.catalog.count() == 10
    meta = final.index_meta("image")
    assert meta is not None and (meta.vectors, meta.products) == (10, 10)
    assert final.catalog_version == 10
    for s in [*stores, final]:
        s.close()


def test_other_encoder_on_existing_catalog_is_a_clear_error(store: Store, tmp_path: Path) -> None:
    with pytest.raises(IndexMismatchError, match="encoder fingerprint"):
        Store(data_dir=tmp_path / "data", text_encoder=TrigramTextEncoder(dim=32))


def test_rebuild_indexes_for_another_dtype(store: Store, tmp_path: Path, tiny_onnx: Path) -> None:
    with pytest.raises(IndexMismatchError, match="dtype i8 != f16"):
        open_store(tmp_path / "data", tiny_onnx, dtype="f16")
    # as after changing catalog.index_dtype: rebuild from the vectors kept in SQLite, no image re-read
    s = open_store(tmp_path / "data", tiny_onnx, dtype="f16", open_indexes=False)
    s.writer.rebuild_indexes()
    meta = s.index_meta("image")
    assert meta is not None and (meta.dtype, meta.vectors, meta.products) == ("f16", 8, 4)
    assert s.search_image([product_image(1, noise=10)], k=1)[0][0].sku == "P1"
    s.close()


def test_aggregate_max_vs_mean() -> None:
    # query hits: product 1 has one very close photo; product 2 has three fairly close ones
    hits = Hits(keys=np.array([[1, 2, 2, 2, 3]], np.uint64),
                scores=np.array([[0.95, 0.93, 0.92, 0.91, 0.40]], np.float32), counts=np.array([5]))
    assert aggregate_hits(hits, k=3, rule="max")[0] == [(1, pytest.approx(0.95)), (2, pytest.approx(0.93)),
                                                        (3, pytest.approx(0.40))]
    mean = aggregate_hits(hits, k=2, rule="mean")[0]
    assert [k for k, _ in mean] == [2, 1]
    assert mean[1][1] == pytest.approx((0.95 + 0.40 + 0.40) / 3)
    # a product with a single reference photo averages over that one photo, not padded with the floor
    single = aggregate_hits(hits, k=2, rule="mean", vectors_per_key={1: 1, 2: 3, 3: 1})[0]
    assert single == [(1, pytest.approx(0.95)), (2, pytest.approx(0.92))]


def test_rrf_ranks_agreement_first() -> None:
    fused = rrf({"bm25": [(1, 9.0), (2, 5.0)], "text": [(2, 0.9), (3, 0.8)]})
    assert [k for k, _, _ in fused] == [2, 1, 3]
    assert fused[0][2] == {"bm25": 5.0, "text": 0.9}
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)


def test_cli_with_the_embedded_default_bundles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """import -> search (image, text, both) -> calibrate -> remove -> list, through `storelens` itself."""
    import json

    from edge.cli.main import main

    root = tmp_path / "shots"
    rng = np.random.default_rng(3)
    for i, sku in enumerate(["oat-milk", "ketchup", "cocoa"]):
        for j in range(2):
            write_jpeg(root / sku / f"{j}.jpg", product_image(i, size=96, noise=6, rng=rng))
        (root / sku / "name.txt").write_text(PRODUCTS[f"P{i}"][0])
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["catalog", "import", str(root), "--json", *data]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["products_added"], report["images_added"], report["rows_skipped"]) == (3, 6, 0)

    assert main(["search", "--text", "tomato ketchup", "-k", "9", "--json", *data]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"][0]["sku"] == "ketchup" and len(out["results"]) == 3  # k clamped to the catalog
    assert main(["search", "--image", str(root / "cocoa" / "0.jpg"), "--json", *data]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["sku"] == "cocoa"
    assert main(["search", "--image", str(root / "cocoa" / "1.jpg"), "--text", "chocolate", *data]) == 0
    assert "cocoa" in capsys.readouterr().out

    assert main(["calibrate", str(root), "--holdout", "0.34", "--json", *data]) == 0
    cal = json.loads(capsys.readouterr().out)
    assert (cal["known_queries"], cal["unknown_queries"], cal["stored"]) == (4, 2, True)

    assert main(["catalog", "remove", "ketchup", *data]) == 0
    assert main(["catalog", "remove", "ketchup", *data]) == 3
    assert "sku 'ketchup' is not in the catalog" in capsys.readouterr().err
    assert main(["catalog", "list", "--json", *data]) == 0
    assert [p["sku"] for p in json.loads(capsys.readouterr().out)["products"]] == ["cocoa", "oat-milk"]
    assert main(["search", *data]) == 3
    assert "nothing to search for" in capsys.readouterr().err


def test_reembed_after_an_encoder_change(store: Store, tmp_path: Path, tiny_onnx: Path) -> None:
    from edge.core.types import Calibration
    from tests.tiny_model import build_tiny_encoder

    store.save_calibration(Calibration(score=0.9, margin=0.01, target=0.95, known_queries=1, unknown_queries=1,
                                       known_accept_rate=1.0, known_top1_accuracy=1.0, accepted_precision=1.0,
                                       false_accept_rate=0.0, held_out=(), catalog_version=1,
                                       fingerprint=TinyImageEncoder(tiny_onnx).fingerprint))
    other = TinyImageEncoder(build_tiny_encoder(tmp_path / "other.onnx", seed=1))
    with pytest.raises(IndexMismatchError, match="storelens catalog reindex"):
        Store(data_dir=tmp_path / "data", image_encoder=other)
    s = Store(data_dir=tmp_path / "data", image_encoder=other, text_encoder=TrigramTextEncoder(), open_indexes=False)
    report = s.writer.reembed(progress=False)
    assert (report.images_added, report.issues) == (8, ())
    meta = s.index_meta("image")
    assert meta is not None and (meta.fingerprint, meta.vectors) == (other.fingerprint, 8)
    assert s.search_image([product_image(3, noise=10)], k=1)[0][0].sku == "P3"
    assert s.thresholds.source == "stale-calibration" and s.thresholds.score is None
    s.close()
