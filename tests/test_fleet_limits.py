"""fleet.max_snapshot_bytes and fleet.keep_snapshots on a real device store (signed announcements, a real
HTTP server, real snapshot folders). fleet.download_timeout_s is covered in tests/test_fleet_trust.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.catalog.importers.tables import read_table
from edge.catalog.install import installed_state
from edge.catalog.store import Store
from edge.core.config import ModelSettings, load_settings
from edge.core.fleet_settings import FleetSettings
from edge.fleet.fetch import Announcement
from edge.fleet.publish import publish_snapshot
from edge.fleet.updates import CatalogUpdater
from edge.models.encoders import ImageEncoder, load_image_encoder
from tests.fleet_helpers import TEST_KEY, TEST_PUBLIC, http_server, write_table

MIB = 1 << 20


def fleet(**kw: object) -> FleetSettings:
    return load_settings(None, device={"store": "s1", "id": "d"}, fleet=kw).fleet


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageEncoder, list[Path]]:
    """Three versions (2, 3 and 4 products) of one build folder."""
    from edge.fleet.build import build_snapshot

    encoder = load_image_encoder(ModelSettings())
    root = tmp_path_factory.mktemp("snaps")
    settings = load_settings(None, device={"store": "s1", "id": "builder"}, fleet={"batch_size": 4})
    out = []
    for n in (2, 3, 4):
        r = build_snapshot(list(read_table(write_table(root / f"t{n}", classes=n, per_class=2, broken=False))),
                           settings=settings, out=root / "out", workdir=root / "work", image_encoder=encoder,
                           text_encoder=None, engine="local", progress=False)
        out.append(Path(r.snapshot))
    return encoder, out


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str, list[str]]]:
    requests: list[str] = []
    (tmp_path / "pub").mkdir()
    with http_server(tmp_path / "pub", requests) as base:
        yield tmp_path / "pub", base, requests


def announce(folder: Path, pub: Path, base: str) -> Announcement:
    return publish_snapshot(folder, to=str(pub), url=f"{base}/{folder.name}.tar", key=TEST_KEY)


def test_an_announced_snapshot_over_max_snapshot_bytes_is_refused_before_any_download(
        tmp_path: Path, builds: tuple[ImageEncoder, list[Path]], served: tuple[Path, str, list[str]]) -> None:
    encoder, folders = builds
    pub, base, requests = served
    store = Store(data_dir=tmp_path / "device", image_encoder=encoder, text_encoder=None)
    try:
        updater = CatalogUpdater(store, fleet=fleet(trusted_keys=[TEST_PUBLIC], allowed_urls=[f"{base}/"],
                                                    max_snapshot_bytes=MIB), store_id="s1")
        real = announce(folders[0], pub, base)
        assert real.size < MIB
        big = dataclasses.replace(real, size=2 * MIB, key=None, signature=None).signed(TEST_KEY)  # signed, honest key
        result = updater.handle(big.to_payload())
        assert result["result"] == "refused" and "over fleet.max_snapshot_bytes (1048576)" in result["error"], result
        assert requests == [] and installed_state(store.data_dir)["current"] is None  # nothing fetched or installed
        assert updater.handle(real.to_payload())["result"] == "installed"  # within the bound: installed
    finally:
        store.close()


def test_keep_snapshots_bounds_the_snapshot_folders_on_the_device(
        tmp_path: Path, builds: tuple[ImageEncoder, list[Path]], served: tuple[Path, str, list[str]]) -> None:
    encoder, folders = builds
    pub, base, _ = served
    store = Store(data_dir=tmp_path / "device", image_encoder=encoder, text_encoder=None)
    try:
        updater = CatalogUpdater(store, fleet=fleet(trusted_keys=[TEST_PUBLIC], allowed_urls=[f"{base}/"],
                                                    keep_snapshots=2), store_id="s1")
        ids = []
        for folder in folders:
            a = announce(folder, pub, base)
            assert updater.handle(a.to_payload())["result"] == "installed"
            ids.append(a.snapshot)
        kept = sorted(d.name for d in updater.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        assert kept == sorted(ids[1:])  # the current one and the newest previous: 2 in all, the oldest removed
        assert updater.rollback()["result"] == "rolled-back"  # the kept previous one still rolls back
        assert installed_state(store.data_dir)["current"]["id"] == ids[1]
    finally:
        store.close()
