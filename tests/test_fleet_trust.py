"""Catalog snapshots a device can trust (issue 28, trust findings 1-6): each malicious snapshot of
:mod:`benchmarks.chaos_snapshots` against a real device store, a real HTTP server and real files.

The device has v1 installed (signed by the tests' key, which it trusts); each case is then
handed to its :class:`~edge.fleet.updates.CatalogUpdater` as the broker would, and the device
must either refuse it with its catalog untouched or install it without the harmful part.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.chaos_snapshots import MaliciousSnapshot, malicious_snapshots, slow_http_server
from edge.catalog.importers.tables import read_table
from edge.catalog.install import installed_state
from edge.catalog.learning import Learner
from edge.catalog.snapshot import SnapshotError, unpack
from edge.catalog.store import Store
from edge.cli.main import main
from edge.core.config import ModelSettings, SettingsError, load_settings
from edge.core.fleet_settings import FleetSettings
from edge.core.learning_settings import LearningSettings
from edge.core.types import Calibration
from edge.fleet.fetch import url_allowed
from edge.fleet.publish import publish_snapshot
from edge.fleet.updates import CatalogUpdater
from edge.models.encoders import ImageEncoder, load_image_encoder
from edge.models.preprocess import read_image
from tests.fleet_helpers import TEST_KEY, TEST_PUBLIC, gsd_photos, http_server, write_table


def fleet(**kw: object) -> FleetSettings:
    return load_settings(None, device={"store": "s1", "id": "d"}, fleet=kw).fleet


@pytest.fixture(scope="module")
def encoder() -> ImageEncoder:
    return load_image_encoder(ModelSettings())


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory, encoder: ImageEncoder) -> tuple[Path, Path]:
    """v1 (2 products) and v2 (3 products) of one build folder."""
    from edge.fleet.build import build_snapshot

    root = tmp_path_factory.mktemp("snaps")
    settings = load_settings(None, device={"store": "s1", "id": "builder"}, fleet={"batch_size": 4})
    out = []
    for n in (2, 3):
        r = build_snapshot(list(read_table(write_table(root / f"t{n}", classes=n, per_class=2, broken=False))),
                           settings=settings, out=root / "out", workdir=root / "work", image_encoder=encoder,
                           text_encoder=None, engine="local", progress=False)
        out.append(Path(r.snapshot))
    return out[0], out[1]


@dataclass
class Device:
    store: Store
    updater: CatalogUpdater
    cases: dict[str, MaliciousSnapshot]
    requests: list[str]  # what the snapshot server was asked
    v1_version: int
    v1_payload: bytes

    def refuses(self, name: str) -> str:
        case = self.cases[name]
        before = self.updater.counts["refused"]
        result = self.updater.handle(case.payload)
        assert result["result"] == "refused", result
        self.assert_untouched()
        assert case.expect in result["error"], result["error"]
        assert self.updater.counts["refused"] == before + 1
        return str(result["error"])

    def assert_untouched(self) -> None:
        assert self.store.catalog_version == self.v1_version and self.store.catalog.count() == 2
        assert installed_state(self.store.data_dir)["current"]["catalog_version"] == self.v1_version
        reopened = Store(data_dir=self.store.data_dir, image_encoder=self.store.image_encoder, text_encoder=None)
        try:  # the next start opens it as it is: nothing committed, nothing to repair
            assert reopened.repairs.rebuilds == 0 and reopened.catalog_version == self.v1_version
        finally:
            reopened.close()


@pytest.fixture
def device(tmp_path: Path, snapshots: tuple[Path, Path], encoder: ImageEncoder) -> Iterator[Device]:
    requests: list[str] = []
    work = tmp_path / "work"
    (work / "pub").mkdir(parents=True)
    with http_server(work / "pub", requests) as base, slow_http_server(work / "pub") as slow:
        store = Store(data_dir=tmp_path / "device", image_encoder=encoder, text_encoder=None)
        updater = CatalogUpdater(store, fleet=fleet(trusted_keys=[TEST_PUBLIC], allowed_urls=[f"{base}/", f"{slow}/"],
                                                    download_timeout_s=1.0), store_id="s1")
        v1 = publish_snapshot(snapshots[0], to=str(work / "pub"), url=f"{base}/{snapshots[0].name}.tar", key=TEST_KEY)
        assert updater.handle(v1.to_payload())["result"] == "installed"
        cases = malicious_snapshots(snapshots[1], work, key=TEST_KEY, data_dir=store.data_dir, url_base=base,
                                    slow_url_base=slow)
        requests.clear()
        try:
            yield Device(store, updater, {c.name: c for c in cases}, requests, v1.version, v1.to_payload())
        finally:
            store.close()


def test_finding1_unsigned_foreign_or_altered_announcements_are_refused_before_any_download(device: Device) -> None:
    assert "not signed" in device.refuses("unsigned")
    assert "not in fleet.trusted_keys" in device.refuses("other-key")
    assert "altered after signing" in device.refuses("altered")
    assert device.requests == []  # nothing was downloaded: the signature is checked first
    keyless = CatalogUpdater(device.store, fleet=fleet(), store_id="s1")
    result = keyless.handle(device.cases["meta-overwrite"].payload)  # even a good signature, without a pinned key
    assert result["result"] == "refused" and "fleet.trusted_keys is empty" in result["error"]
    assert "storelens catalog keygen" in result["error"]


def test_a_replayed_older_announcement_is_refused(device: Device, snapshots: tuple[Path, Path]) -> None:
    pub = device.store.data_dir.parent / "work" / "pub"
    v2 = publish_snapshot(snapshots[1], to=str(pub), key=TEST_KEY)
    device.updater.fleet = device.updater.fleet.model_copy(update={"snapshot_dir": pub})
    assert device.updater.handle(v2.to_payload())["result"] == "installed"
    result = device.updater.handle(device.v1_payload)  # validly signed, but old: someone replayed it
    assert result["result"] == "refused" and "older than the installed" in result["error"]
    assert device.store.catalog_version == v2.version


def test_finding1_a_snapshot_never_overwrites_device_meta(device: Device) -> None:
    cal = Calibration(score=0.5, margin=0.01, target=0.95, known_queries=1, unknown_queries=0,
                      known_accept_rate=1.0, known_top1_accuracy=1.0, accepted_precision=1.0, false_accept_rate=0.0,
                      held_out=(), catalog_version=1, fingerprint="device", learn_floor=0.6)
    device.store.save_calibration(cal)
    device.store.catalog.set_meta("fusion_weights", "device-weights")
    result = device.updater.handle(device.cases["meta-overwrite"].payload)
    assert result["result"] == "installed", result
    assert device.store.catalog.count() == 3  # the snapshot's rows are in...
    assert device.store.calibration == cal  # ...its meta is not
    assert device.store.catalog.get_meta("fusion_weights") == "device-weights"


def test_finding2_a_contradicting_sidecar_is_refused_before_commit(device: Device) -> None:
    assert "encoder 0123456789abcdef" in device.refuses("sidecar-contradicts")


def test_finding3_a_damaged_graph_is_refused_by_a_probe_in_a_child_process(device: Device) -> None:
    error = device.refuses("damaged-graph")
    assert "child process" in error
    photo = next(iter(gsd_photos(2, 1).values()))[1]
    assert device.store.search_image([read_image(photo)], 1)[0][0].sku == next(iter(gsd_photos(2, 1)))


def test_finding4_learned_rows_of_a_snapshot_are_never_imported(device: Device) -> None:
    lr = Learner(device.store, LearningSettings())
    case = device.cases["learned-paths"]
    assert case.victim is not None and case.victim.is_file()
    assert device.updater.handle(case.payload)["result"] == "installed"
    assert all(p.path != str(case.victim) for p in lr.learned())
    lr.forget()  # what used to delete the snapshot's "learned" files
    review = lr._db.execute("SELECT COUNT(*) FROM learning_review").fetchone()[0]
    assert review == 0 and case.victim.is_file()


def test_finding5_the_snapshot_field_never_names_a_path(device: Device) -> None:
    case = device.cases["path-traversal"]
    assert case.victim is not None and (case.victim / "keep.txt").is_file()
    device.refuses("path-traversal")
    assert (case.victim / "keep.txt").is_file()
    assert device.requests == []


def test_finding6_sparse_entries_urls_and_slow_servers_are_bounded(device: Device, tmp_path: Path) -> None:
    device.refuses("sparse-tar")
    assert not any(f.stat().st_size > 1 << 30 for f in (device.store.data_dir / "snapshots").rglob("*")
                   if f.is_file())
    sparse = next((tmp_path / "work" / "pub").glob("sparse-*.tar"))
    with pytest.raises(SnapshotError, match="sparse file"):
        unpack(sparse, tmp_path / "unpacked")
    assert not (tmp_path / "unpacked").exists()

    inner: list[str] = []
    with http_server(tmp_path, inner) as internal:  # a service on another port of the device's network
        case = device.cases["url-outside"]
        payload = json.loads(case.payload)
        payload["url"] = f"{internal}/admin"
        result = device.updater.handle(json.dumps(payload).encode())
    assert result["result"] == "refused" and "not under fleet.allowed_urls" in result["error"] and inner == []

    done: list[dict[str, object]] = []
    worker = threading.Thread(target=lambda: done.append(device.updater.handle(device.cases["slow-download"].payload)))
    worker.start()
    worker.join(30)  # fleet.download_timeout_s is 1 s in all; the old per-read timeout never fired
    assert not worker.is_alive() and done and done[0]["result"] == "refused"
    assert "took longer than fleet.download_timeout_s" in str(done[0]["error"])
    device.assert_untouched()


def test_allowed_urls_match_scheme_host_port_and_whole_path_segments() -> None:
    allowed = ["https://cdn.example/catalogs/", "http://10.0.0.5:8080/snap"]
    assert url_allowed("https://cdn.example/catalogs/abc.tar", allowed)
    assert url_allowed("https://cdn.example:443/catalogs/x/abc.tar", allowed)
    assert url_allowed("http://10.0.0.5:8080/snap/abc.tar", allowed)
    for bad in ("http://cdn.example/catalogs/abc.tar", "https://cdn.example/catalogs-evil/abc.tar",
                "https://cdn.example:8443/catalogs/abc.tar", "https://evil.example/catalogs/abc.tar",
                "https://cdn.example@evil.example/catalogs/abc.tar", "https://cdn.example/catalogs/../admin",
                "https://cdn.example/catalogs/%2e%2e/admin", "http://10.0.0.5:8081/snap/abc.tar",
                "http://10.0.0.5:8080/snapshot.tar", "file:///etc/passwd"):
        assert not url_allowed(bad, allowed), bad
    with pytest.raises(SettingsError, match="not an http"):
        fleet(allowed_urls=["ftp://x/"])
    with pytest.raises(SettingsError, match="Ed25519 key has 32"):
        fleet(trusted_keys=["ed25519:AAAA"])


def test_keygen_writes_a_private_key_once_and_prints_the_public_one(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "chain.key"
    assert main(["catalog", "keygen", "--out", str(key)]) == 0
    public = (tmp_path / "chain.key.pub").read_text().strip()
    assert f'trusted_keys = ["{public}"]' in capsys.readouterr().out
    assert os.stat(key).st_mode & 0o077 == 0
    fleet(trusted_keys=[public])  # what the device config takes
    before = key.read_bytes()
    assert main(["catalog", "keygen", "--out", str(key)]) != 0  # never overwritten
    assert key.read_bytes() == before
