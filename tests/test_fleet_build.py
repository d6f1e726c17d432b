"""Catalog snapshots (issue 19): built on Ray or in one process, compared with the importer, verified,
installed through the writer's path, refused when damaged, rolled back.

Real parts: the shipped image bundle, Grocery Store photos, Ray (the ``fleet`` extra; its test is
skipped without it), SQLite and USearch files on disk.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edge.fleet.build as build_mod
from benchmarks.fleet import photo_vectors
from edge.catalog.importers.tables import read_table
from edge.catalog.snapshot import SnapshotError, read_manifest, unpack, verify
from edge.catalog.store import Store
from edge.core.config import ModelSettings, Settings, load_settings
from edge.core.fleet_settings import FleetSettings
from edge.fleet.build import Assortment, BuildReport, build_snapshot
from edge.fleet.publish import publish_snapshot
from edge.fleet.updates import CatalogUpdater
from edge.models.encoders import ImageEncoder, load_image_encoder
from edge.models.preprocess import read_image
from tests.fleet_helpers import BAD_SKU, TEST_KEY, TEST_PUBLIC, gsd_photos, write_table
from tests.requires import need_module

COSINE_FLOOR = 0.9999


@pytest.fixture(scope="module")
def encoder() -> ImageEncoder:
    return load_image_encoder(ModelSettings())


def device_fleet(pub: Path, **over: Any) -> FleetSettings:
    """A device's [fleet]: snapshots from the ``pub`` folder, signed by the tests' key."""
    return load_settings(None, device={"store": "s1", "id": "d"},
                         fleet={"snapshot_dir": str(pub), "trusted_keys": [TEST_PUBLIC], **over}).fleet


def settings(**fleet: Any) -> Settings:
    return load_settings(None, device={"store": "s1", "id": "builder"}, fleet={"batch_size": 4, **fleet})


def build(table: Path, out: Path, workdir: Path, encoder: ImageEncoder, **kw: Any) -> BuildReport:
    engine = kw.pop("engine", "local")
    return build_snapshot(list(read_table(table)), settings=kw.pop("settings", settings()), out=out, workdir=workdir,
                          image_encoder=encoder, text_encoder=None, engine=engine, progress=False, **kw)


def importer_vectors(table: Path, data_dir: Path, encoder: ImageEncoder) -> dict[str, np.ndarray]:
    store = Store(data_dir=data_dir, image_encoder=encoder, text_encoder=None)
    try:
        store.import_records(list(read_table(table)), progress=False)
    finally:
        store.close()
    return photo_vectors(data_dir / "catalog.db")


def assert_same_embeddings(snapshot: Path, reference: dict[str, np.ndarray]) -> None:
    got = photo_vectors(snapshot / "catalog.db")
    assert set(got) == set(reference) and len(got) > 0
    for path, v in got.items():
        r = reference[path]
        cos = float(v @ r / (np.linalg.norm(v) * np.linalg.norm(r)))
        assert cos >= COSINE_FLOOR, (path, cos)


def test_local_build_matches_the_importer_and_lists_bad_photos(tmp_path: Path, encoder: ImageEncoder) -> None:
    table = write_table(tmp_path / "t")
    report = build(table, tmp_path / "out", tmp_path / "work", encoder)
    assert (report.products, report.photos, report.embedded, report.from_cache) == (5, 15, 15, 0)
    assert sorted(Path(p).name for p, _ in report.unreadable) == ["bad.jpg", "missing.jpg"]
    assert any(BAD_SKU in s and "no readable image" in s for s in report.skipped)
    m = verify(Path(report.snapshot), bundle=encoder.fingerprint, dtype="i8")
    assert m.id == Path(report.snapshot).name and m.counts["unreadable"] == 2 and m.assortment is None
    assert set(m.files) == {"catalog.db", "image.index.json", next(f for f in m.files if f.endswith(".usearch"))}
    assert_same_embeddings(Path(report.snapshot), importer_vectors(table, tmp_path / "imported", encoder))


def test_build_resumes_after_a_crash_and_filters_by_assortment(tmp_path: Path, encoder: ImageEncoder,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    table = write_table(tmp_path / "t", broken=False)
    out, work = tmp_path / "out", tmp_path / "work"
    real = build_mod.embed_local

    def crashing(paths: Any, *, on_batch: Any, **kw: Any) -> None:
        done = []

        def cb(*a: Any) -> None:
            on_batch(*a)
            done.append(1)
            if len(done) == 2:
                raise KeyboardInterrupt  # the build dies after two batches of 4 photos were stored

        real(paths, on_batch=cb, **kw)

    monkeypatch.setattr(build_mod, "embed_local", crashing)
    with pytest.raises(KeyboardInterrupt):
        build(table, out, work, encoder)
    monkeypatch.undo()
    again = build(table, out, work, encoder)
    assert (again.from_cache, again.embedded, again.photos) == (8, 7, 15)

    skus = list(gsd_photos(3, 2))
    (tmp_path / "s1.txt").write_text("# store s1\n" + "\n".join([*skus, "NOT-IN-TABLE"]) + "\n")
    store = build(table, out, work, encoder, assortment=Assortment.read(tmp_path / "s1.txt", store="s1"))
    assert (store.products, store.embedded, store.from_cache, store.scope) == (2, 0, 6, "s1")
    m = read_manifest(Path(store.snapshot))
    assert m.assortment is not None and m.assortment["missing_from_table"] == 1 and m.assortment["skus"] == 3
    assert m.catalog_version == again.catalog_version + 1  # versions grow across builds


def test_ray_build_matches_the_importer(tmp_path: Path, encoder: ImageEncoder) -> None:
    need_module("ray", "pip install -e '.[fleet]' (.ci/run installs it)")
    table = write_table(tmp_path / "t")
    report = build(table, tmp_path / "out", tmp_path / "work", encoder, engine="ray", settings=settings(workers=2))
    assert (report.engine, report.workers, report.products, report.embedded) == ("ray", 2, 5, 15)
    assert sorted(Path(p).name for p, _ in report.unreadable) == ["bad.jpg", "missing.jpg"]
    verify(Path(report.snapshot), bundle=encoder.fingerprint, dtype="i8")
    assert_same_embeddings(Path(report.snapshot), importer_vectors(table, tmp_path / "imported", encoder))


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory, encoder: ImageEncoder) -> tuple[Path, Path]:
    """Two snapshots of one build folder: 3 products (v1), then 5 (v2)."""
    root = tmp_path_factory.mktemp("snaps")
    v1 = build(write_table(root / "a", classes=3, broken=False), root / "out", root / "work", encoder)
    v2 = build(write_table(root / "b", classes=5, broken=False), root / "out", root / "work", encoder)
    return Path(v1.snapshot), Path(v2.snapshot)


def test_verify_refuses_damaged_snapshots(tmp_path: Path, snapshots: tuple[Path, Path], encoder: ImageEncoder) -> None:
    import shutil

    def copy() -> Path:
        dst = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        shutil.copytree(snapshots[0], dst)
        return dst

    with pytest.raises(SnapshotError, match=r"does not fit this device.*image bundle"):
        verify(snapshots[0], bundle="0123456789abcdef")
    with pytest.raises(SnapshotError, match="index dtype is i8"):
        verify(snapshots[0], dtype="f16")
    d = copy()
    data = bytearray((d / "catalog.db").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "catalog.db").write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match=r"catalog\.db is corrupt"):
        verify(d)
    d = copy()
    idx = next(d.glob("*.usearch"))
    idx.write_bytes(idx.read_bytes()[:100])
    with pytest.raises(SnapshotError, match="truncated"):
        verify(d)
    d = copy()
    (d / "extra.bin").write_bytes(b"x")
    with pytest.raises(SnapshotError, match="does not list"):
        verify(d)
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(SnapshotError, match="not a plain file"):
        unpack(evil, tmp_path / "unpacked")
    assert not (tmp_path / "escape.txt").exists()


def test_install_refuse_and_rollback_through_the_writer(tmp_path: Path, snapshots: tuple[Path, Path],
                                                        encoder: ImageEncoder) -> None:
    pub = tmp_path / "pub"
    a1, a2 = (publish_snapshot(s, to=str(pub), key=TEST_KEY) for s in snapshots)
    store = Store(data_dir=tmp_path / "device", image_encoder=encoder, text_encoder=None)
    photo = next(iter(gsd_photos(3, 1).values()))[2]
    store.enroll("LOCAL", name="a local product", images=[photo])
    fleet = device_fleet(pub)
    updater = CatalogUpdater(store, fleet=fleet, store_id="s1")
    query = read_image(photo)
    try:
        assert updater.handle(a1.to_payload())["result"] == "installed"
        assert store.catalog_version == a1.version and store.catalog.count() == 3
        assert store.catalog.get("LOCAL") is None
        top = store.search_image([query], 1)[0][0].sku
        assert top == next(iter(gsd_photos(3, 1)))
        assert updater.handle(a1.to_payload())["result"] == "current"

        broken = pub / "broken.tar"
        data = bytearray(Path(a2.url.removeprefix("file://")).read_bytes())
        data[len(data) // 3] ^= 0xFF
        broken.write_bytes(bytes(data))
        refusals = [dataclasses.replace(a2, url=broken.as_uri()),  # corrupt in transit
                    dataclasses.replace(a2, size=a2.size + 10).signed(TEST_KEY),  # truncated
                    dataclasses.replace(a2, bundle="0123456789abcdef").signed(TEST_KEY),  # another bundle
                    dataclasses.replace(a2, url=(tmp_path / "elsewhere.tar").as_uri())]  # outside snapshot_dir
        results = [updater.handle(a.to_payload()) for a in refusals]
        assert [r["result"] for r in results] == ["refused"] * 4
        assert "corrupt" in results[0]["error"] and "truncated" in results[1]["error"]
        assert "image bundle" in results[2]["error"] and "outside fleet.snapshot_dir" in results[3]["error"]
        assert updater.handle(b"{not json")["result"] == "refused"
        assert updater.status()["refused"] == 5 and updater.status()["snapshot"] == a1.snapshot
        assert store.search_image([query], 1)[0][0].sku == top  # still serving the old catalog
        assert store.catalog_version == a1.version

        assert updater.handle(a2.to_payload())["result"] == "installed"
        assert store.catalog_version == a2.version and store.catalog.count() == 5
        assert updater.rollback()["id"] == a1.snapshot
        assert store.catalog_version == a1.version and store.catalog.count() == 3
        assert updater.handle(a2.to_payload())["result"] == "rolled-back"  # not reinstalled until a new one
        assert store.search_image([query], 1)[0][0].sku == top
        reopened = Store(data_dir=tmp_path / "device", image_encoder=encoder, text_encoder=None)
        assert reopened.repairs.rebuilds == 0 and reopened.catalog.count() == 3  # indexes agree with the rows
        reopened.close()
    finally:
        store.close()


def test_cli_build_and_rollback(tmp_path: Path, snapshots: tuple[Path, Path], encoder: ImageEncoder,
                                capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from edge.cli.main import main

    table = write_table(tmp_path / "t", classes=2)
    cfg = tmp_path / "chain.toml"
    cfg.write_text('[device]\nstore = "chain"\nid = "builder"\n[catalog]\nexpansion_search = 96\n')
    assert main(["catalog", "build", str(table), "--out", str(tmp_path / "out"), "--engine", "local", "--no-text",
                 "--no-progress", "--json", "--batch-size", "3", "--config", str(cfg)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["products"], report["unreadable_count"], report["engine"]) == (2, 2, "local")
    side = json.loads((Path(report["snapshot"]) / "image.index.json").read_text())
    assert side["expansion_search"] == 96  # the search breadth devices will use travels with the snapshot
    assert (tmp_path / "out" / f"{report['snapshot_id']}.build.json").is_file()

    pub, device = tmp_path / "pub", tmp_path / "device"
    store = Store(data_dir=device, image_encoder=encoder, text_encoder=None)
    fleet = device_fleet(pub)
    updater = CatalogUpdater(store, fleet=fleet, store_id="s1")
    for snap in snapshots:
        assert updater.handle(publish_snapshot(snap, to=str(pub), key=TEST_KEY).to_payload())["result"] == "installed"
    store.close()
    assert main(["catalog", "rollback", "--data-dir", str(device)]) == 0
    assert f"rolled back to snapshot {snapshots[0].name}" in capsys.readouterr().out
    assert main(["catalog", "rollback", "--data-dir", str(device)]) == 7  # nothing older: a CatalogError
