"""Learning from confirmations (edge.catalog.learning) on a real catalog: SQLite, USearch, the tiny real encoder."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.catalog import index as ix
from edge.catalog.install import install
from edge.catalog.learning import Learner, learn_floor
from edge.catalog.snapshot import verify, write_snapshot
from edge.catalog.store import Store
from edge.cli.learning import parse_since
from edge.core.errors import InputError
from edge.core.learning_settings import LearningSettings
from edge.core.types import Calibration
from tests.encoders_for_tests import TinyImageEncoder, product_image


@pytest.fixture
def store(tmp_path: Path, tiny_onnx: Path) -> Iterator[Store]:
    # best photo per product: a learned photo's own cosine (1.0) shows directly in the product's score
    s = Store(data_dir=tmp_path / "data", image_encoder=TinyImageEncoder(tiny_onnx), dtype="f32", aggregate="max")
    for i, sku in enumerate(("A", "B", "C")):
        s.enroll(sku, name=f"product {sku}", images=[product_image(i), product_image(i, noise=6)])
    yield s
    s.close()


def top(store: Store, image: np.ndarray) -> list[tuple[str, float]]:
    return [(r.sku, round(r.score, 5)) for r in store.search_image([image], k=3)[0]]


def learner(store: Store, **kw: object) -> Learner:
    return Learner(store, LearningSettings(**{"hold_below": -1.0, **kw}))  # type: ignore[arg-type]


def test_a_confirmed_crop_is_searchable_after_the_swap(store: Store) -> None:
    crop = product_image(7, noise=3)  # a look of a product that none of its photos shows
    before = top(store, crop)
    sku = next(s for s, _ in before if s != before[0][0])  # a product that is not top-1 today
    version = store.catalog_version
    meta = store.index_meta("image")
    res = learner(store).learn(sku, crop, source="kiosk", ref="view-1")
    assert res.outcome == "learned" and res.catalog_version == version + 1 == store.catalog_version
    new_meta = store.index_meta("image")
    assert meta is not None and new_meta is not None and new_meta.file != meta.file  # a new generation, swapped in
    assert new_meta.vectors == meta.vectors + 1 and new_meta.catalog_version == store.catalog_version
    assert top(store, crop)[0][0] == sku  # searchable by the store the runtime reads, without a restart
    reopened = Store(data_dir=store.data_dir, image_encoder=store.image_encoder, dtype="f32", aggregate="max")
    try:  # another process sees it too, and the index agrees with the catalog (no repair)
        assert top(reopened, crop)[0][0] == sku and reopened.repairs.rebuilds == 0
    finally:
        reopened.close()
    photo = Learner(store).learned(sku=sku)
    assert [(p.source, p.ref) for p in photo] == [("kiosk", "view-1")] and Path(photo[0].path).is_file()


def test_a_near_duplicate_is_skipped(store: Store) -> None:
    enc = store.image_encoder
    assert enc is not None
    version, vectors = store.catalog_version, store.catalog.vector_counts("image", enc.fingerprint)
    res = learner(store).learn("A", product_image(0), source="command")  # the enrolled photo itself
    assert res.outcome == "duplicate" and res.cosine >= 0.95
    assert store.catalog_version == version
    assert store.catalog.vector_counts("image", enc.fingerprint) == vectors
    assert Learner(store).stats()["duplicate"] == 1


def test_a_far_off_wrong_confirmation_is_held_by_the_calibrated_threshold(store: Store) -> None:
    enc = store.image_encoder
    assert enc is not None
    store.save_calibration(Calibration(score=0.5, margin=0.01, target=0.95, known_queries=1, unknown_queries=0,
                                       known_accept_rate=1, known_top1_accuracy=1, accepted_precision=1,
                                       false_accept_rate=0, held_out=(), catalog_version=1,
                                       fingerprint=enc.fingerprint, learn_floor=0.5))
    lrn = Learner(store)  # hold_below unset: the calibration's learn_floor decides
    assert lrn.hold_below == 0.5
    a = enc.embed([product_image(0)])[0]
    version = store.catalog_version
    res = lrn.learn("A", product_image(1), source="scan", ref="pos-1", embedding=-a)  # far from every photo of A
    assert res.outcome == "held" and res.cosine < 0.5 and store.catalog_version == version
    held = lrn.held()
    assert [(h["sku"], h["source"], h["ref"]) for h in held] == [("A", "scan", "pos-1")]
    assert Path(held[0]["path"]).is_file()
    assert lrn.stats()["held"] == 1 and lrn.learned() == []
    assert Learner(store, LearningSettings(hold_below=0.2)).hold_below == 0.2  # config wins
    cal = store.calibration
    assert cal is not None
    store.save_calibration(dataclasses.replace(cal, fingerprint="other"))  # measured with another encoder
    assert Learner(store).hold_below == LearningSettings().uncalibrated_hold_below


def test_forget_learned_restores_the_previous_result(store: Store) -> None:
    crops = [product_image(s, noise=3) for s in (7, 8, 9)]
    before = [top(store, c) for c in crops]
    lrn = learner(store)
    for c, b in zip(crops, before, strict=True):
        assert lrn.learn(b[-1][0], c, source="kiosk").outcome == "learned"  # each as its least likely product
    assert [top(store, c) for c in crops] != before
    version = store.catalog_version
    assert lrn.forget(sku="nope") == 0 and store.catalog_version == version  # nothing matched: no write
    paths = [p.path for p in lrn.learned()]
    assert lrn.forget() == 3
    assert [top(store, c) for c in crops] == before
    assert store.catalog_version == version + 1 and lrn.learned() == []
    assert not any(Path(p).exists() for p in paths)
    assert len(store.catalog.images("A")) == 2  # enrolled photos stay


def test_forget_since_and_per_sku(store: Store) -> None:
    lrn = learner(store, duplicate_cosine=1.0)
    for sku, seed, ts in (("A", 7, 1000.0), ("B", 8, 2000.0), ("B", 9, 3000.0)):
        assert lrn.learn(sku, product_image(seed), source="kiosk", ts=ts).outcome == "learned"
    assert lrn.forget(since=2500.0) == 1
    assert [(p.sku, p.learned_ts) for p in lrn.learned()] == [("A", 1000.0), ("B", 2000.0)]
    assert lrn.forget(sku="A") == 1 and [p.sku for p in lrn.learned()] == ["B"]


def test_the_oldest_learned_photos_leave_first_enrolled_ones_never(store: Store) -> None:
    lrn = learner(store, max_per_product=2, duplicate_cosine=1.0)
    results = [lrn.learn("A", product_image(s, noise=2), source="kiosk", ts=float(s)) for s in (7, 8, 9)]
    assert [r.evicted for r in results] == [0, 0, 1]
    assert [p.learned_ts for p in lrn.learned(sku="A")] == [8.0, 9.0]
    assert len(store.catalog.images("A")) == 4  # 2 enrolled + 2 learned
    enc = store.image_encoder
    assert enc is not None and ix.read_meta(store.data_dir, "image").vectors == 6 + 2  # type: ignore[union-attr]
    assert lrn.stats()["evicted"] == 1


def test_unknown_sku_and_bad_crop_are_refused(store: Store) -> None:
    with pytest.raises(InputError):
        learner(store).learn("nope", product_image(1), source="command")
    with pytest.raises(InputError):
        learner(store).learn("A", np.zeros((4, 4, 3), np.uint8), source="command")


def test_learn_floor_is_a_low_quantile_of_own_product_cosines(store: Store) -> None:
    enc = store.image_encoder
    assert enc is not None
    embs = enc.embed([product_image(i, noise=4) for i in (0, 1, 2)])
    floor = learn_floor(store, embs, ["A", "B", "C"])
    assert floor is not None and -1 <= floor <= 1
    assert learn_floor(store, embs[:1], ["not-enrolled"]) is None


def test_parse_since() -> None:
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2026-12-01") == parse_since("2026-12-01T00:00:00+00:00")
    assert parse_since(None) is None
    with pytest.raises(InputError):
        parse_since("yesterday")


def test_learned_photos_survive_a_catalog_snapshot_install(store: Store, tmp_path: Path) -> None:
    """A chain's snapshot replaces the catalog rows; what this device learned stays where its product stays."""
    enc = store.image_encoder
    assert enc is not None
    crop_b, crop_c = product_image(7, noise=3), product_image(8, noise=3)
    lr = learner(store)
    assert lr.learn("B", crop_b, source="kiosk", ref="v1").outcome == "learned"
    assert lr.learn("C", crop_c, source="scan", ref="v2").outcome == "learned"
    (learned_b,) = lr.learned(sku="B")
    (learned_c,) = lr.learned(sku="C")
    chain = Store(data_dir=tmp_path / "chain", image_encoder=enc, dtype="f32", aggregate="max")
    for i, sku in enumerate(("A", "B", "D")):  # C left the assortment, D is new
        chain.enroll(sku, name=f"product {sku}", images=[product_image(i), product_image(i, noise=6)])
    chain.close()
    folder, manifest = write_snapshot(tmp_path / "chain", tmp_path / "snapshots", bundle=enc.fingerprint,
                                      text_bundle=None, dtype="f32", counts={}, assortment=None)
    verify(folder, bundle=enc.fingerprint, dtype="f32")
    install(store, folder, manifest, sha256="0" * 64)
    assert sorted(p.sku for p in store.catalog.products()) == ["A", "B", "D"]
    assert [(p.sku, p.path, p.source, p.ref) for p in lr.learned()] == [("B", learned_b.path, "kiosk", "v1")]
    assert top(store, crop_b)[0] == ("B", 1.0)  # still found by its learned photo, through the new index
    meta = store.index_meta("image")
    assert meta is not None and meta.vectors == 3 * 2 + 1 and meta.catalog_version == manifest.catalog_version
    assert not Path(learned_c.path).exists()  # its product is gone: the photo with it
    reopened = Store(data_dir=store.data_dir, image_encoder=enc, dtype="f32", aggregate="max")
    try:  # the index agrees with the catalog rows: nothing to repair
        assert reopened.repairs.rebuilds == 0 and top(reopened, crop_b)[0] == ("B", 1.0)
    finally:
        reopened.close()


def test_review_max_keeps_the_newest_held_crops_and_zero_keeps_none(store: Store) -> None:
    """learning.review_max: held crops beyond it are dropped oldest first, rows and files; 0 keeps none."""
    enc = store.image_encoder
    assert enc is not None
    far = -enc.embed([product_image(0)])[0]  # far from every photo of A: always held (hold_below 0.5)
    lrn = learner(store, hold_below=0.5, review_max=2)
    for i in range(4):
        assert lrn.learn("A", product_image(1), source="scan", ref=f"pos-{i}", ts=100.0 + i,
                         embedding=far).outcome == "held"
    held = lrn.held()
    assert [h["ref"] for h in held] == ["pos-3", "pos-2"]  # the newest two
    assert sorted(p.name for p in lrn.review_dir.iterdir()) == sorted(Path(h["path"]).name for h in held)
    none = learner(store, hold_below=0.5, review_max=0)
    assert none.learn("A", product_image(1), source="scan", ref="pos-9", ts=200.0, embedding=far).outcome == "held"
    assert [h["ref"] for h in none.held()] == ["pos-3", "pos-2"]  # nothing new kept for review


def test_install_enroll_learn_and_reload_at_once_leave_a_consistent_catalog(store: Store, tmp_path: Path) -> None:
    """A snapshot install (twice, two snapshots) while other threads enroll, learn and reload+search the same
    data folder: nothing raises, and afterwards the index agrees with the catalog rows (no repair on reopen)
    and every learned photo that survives belongs to a product still there, found through the index."""
    import threading

    enc = store.image_encoder
    assert enc is not None
    snaps = []
    for name, skus in (("chain1", ("A", "B", "D")), ("chain2", ("A", "B", "E"))):
        chain = Store(data_dir=tmp_path / name, image_encoder=enc, dtype="f32", aggregate="max")
        for i, sku in enumerate(skus):
            chain.enroll(sku, name=f"product {sku}", images=[product_image(i), product_image(i, noise=6)])
        chain.close()
        snaps.append(write_snapshot(tmp_path / name, tmp_path / f"snapshots-{name}", bundle=enc.fingerprint,
                                    text_bundle=None, dtype="f32", counts={}, assortment=None))
    errors: list[BaseException] = []
    lr = learner(store)

    def guarded(fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except BaseException as e:
                errors.append(e)
        return threading.Thread(target=run)

    def installs() -> None:
        for k, (folder, manifest) in enumerate(snaps):
            install(store, folder, manifest, sha256=f"{k}" * 64)

    def enrolls() -> None:
        for i in range(4):
            store.enroll(f"N{i}", name=f"new {i}", images=[product_image(20 + i)])

    def learns() -> None:
        for i in range(4):
            assert lr.learn("B", product_image(30 + i, noise=3), source="kiosk", ref=f"v{i}").outcome == "learned"

    def reloads() -> None:
        for _ in range(10):
            store.reload()
            assert store.search_image([product_image(0)], k=3)[0]

    threads = [guarded(f) for f in (installs, enrolls, learns, reloads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [], errors
    store.reload()
    now = {p.sku for p in store.catalog.products()}
    assert {"A", "B", "E"} <= now and "D" not in now and "C" not in now  # the second snapshot is current
    learned = lr.learned()
    assert learned and all(p.sku in now for p in learned)
    for p in learned:
        assert Path(p.path).is_file()
    reopened = Store(data_dir=store.data_dir, image_encoder=enc, dtype="f32", aggregate="max")
    try:  # the index agrees with the catalog rows: nothing to repair
        assert reopened.repairs.rebuilds == 0
        meta = reopened.index_meta("image")
        assert meta is not None and meta.vectors == reopened.catalog.vector_counts("image", enc.fingerprint)[0]
        crop = product_image(30 + 3, noise=3)
        assert top(reopened, crop)[0] == ("B", 1.0)  # the last learned photo, found through the index
    finally:
        reopened.close()
