"""A store's fleet (issue 19): three `storelens run` devices on one Mosquitto and one HTTP server.

A snapshot is published (`storelens catalog publish --key` + the signed retained announcement)
and all three install it and report its version in their retained status; an unsigned
announcement and a corrupted snapshot are refused by all three (counted in status) while they
keep answering searches on the catalog they have; the repaired one is installed, `storelens
fleet status` sees every device on it, and `cmd/rollback` returns one device to the previous
snapshot. Real processes, broker, HTTP and bundle.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from benchmarks._broker import Broker
from edge.catalog.importers.tables import read_table
from edge.cli.main import main
from edge.core.config import MqttSettings, load_settings
from edge.fleet.build import build_snapshot
from edge.fleet.publish import announce, publish_snapshot
from edge.models.encoders import load_image_encoder
from tests.fleet_helpers import TEST_KEY, TEST_PUBLIC, gsd_photos, http_server, write_table
from tests.runtime_helpers import Collector

pytestmark = pytest.mark.slow
DEVICES = ("d1", "d2", "d3")
ROOT = Path(__file__).resolve().parents[1]


def device_config(tmp: Path, dev: str, port: int, frames: Path, server: str) -> Path:
    cfg = tmp / f"{dev}.toml"
    cfg.write_text(f'[device]\nstore = "s1"\nid = "{dev}"\n[catalog]\ndata_dir = "{tmp / dev}"\n'
                   f'[[cameras]]\nname = "cam"\nsource = "{frames}"\nloop = true\nfps = 2\n'
                   f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nstats_interval_s = 60\n[ocr]\nenabled = false\n'
                   f'[fleet]\ntrusted_keys = ["{TEST_PUBLIC}"]\nallowed_urls = ["{server}/"]\n')
    return cfg


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The chain's snapshot server: tmp_path/pub over HTTP (devices allow only its URLs)."""
    (tmp_path / "pub").mkdir()
    with http_server(tmp_path / "pub") as base:
        yield base


@pytest.fixture
def devices(tmp_path: Path, broker: Broker, server: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, photo in enumerate(next(iter(gsd_photos(2, 1).values()))):
        shutil.copy(photo, frames / f"{i}.jpg")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs = [(tmp_path / f"{d}.log").open("wb") for d in DEVICES]
    procs = [subprocess.Popen([sys.executable, "-m", "edge.cli.main", "run", "--config",
                               str(device_config(tmp_path, d, broker.port, frames, server))], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=log)
             for d, log in zip(DEVICES, logs, strict=True)]
    try:
        yield procs
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


def latest(c: Collector, suffix: str) -> dict[str, Any]:
    msgs = c.json_of(suffix)
    return msgs[-1] if msgs else {}


def all_devices(c: Collector, pred: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
    return c.wait(lambda: all(pred(latest(c, f"s1/{d}/status")) for d in DEVICES), timeout=timeout)


def search(c: Collector, dev: str, image_b64: str, qid: str) -> dict[str, Any]:
    c.publish(f"storelens/s1/{dev}/cmd/search", json.dumps({"id": qid, "images": [{"b64": image_b64}], "k": 3}))
    replies = lambda: [r for r in c.json_of(f"s1/{dev}/cmd/search/reply") if r.get("id") == qid]  # noqa: E731
    assert c.wait(lambda: bool(replies()), timeout=30), f"{dev} did not answer search {qid}"
    return replies()[0]


def test_three_devices_install_refuse_and_roll_back(tmp_path: Path, broker: Broker, server: str,
                                                    devices: list[subprocess.Popen[bytes]]) -> None:
    settings = load_settings(None, device={"store": "s1", "id": "builder"}, fleet={"batch_size": 8})
    enc = load_image_encoder(settings.model)
    snaps = []
    for n in (3, 5):  # v1: 3 products, v2: 5
        report = build_snapshot(list(read_table(write_table(tmp_path / f"t{n}", classes=n, broken=False))),
                                settings=settings, out=tmp_path / "snapshots", workdir=tmp_path / "work",
                                image_encoder=enc, text_encoder=None, engine="local", progress=False)
        snaps.append(report)
    photo = next(iter(gsd_photos(3, 1).values()))[2]
    expected = next(iter(gsd_photos(3, 1)))
    _, jpg = cv2.imencode(".jpg", cv2.imread(str(photo)))  # type: ignore[arg-type]
    query = base64.b64encode(jpg.tobytes()).decode()
    pub, base = tmp_path / "pub", server
    key = tmp_path / "chain.key"
    key.write_bytes(TEST_KEY.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    c = Collector(broker.port, "storelens/s1/#", client_id="fleet-test")
    mqtt = MqttSettings(host="127.0.0.1", port=broker.port)
    try:
        assert all_devices(c, lambda s: "catalog_update" in s, timeout=120), [
            (tmp_path / f"{d}.log").read_text()[-2000:] for d in DEVICES]
        v1, v2 = snaps
        assert main(["catalog", "publish", v1.snapshot, "--to", base, "--store", "s1",  # uploaded by HTTP PUT
                     "--broker", f"127.0.0.1:{broker.port}", "--key", str(key)]) == 0
        assert (pub / f"{v1.snapshot_id}.tar").is_file()
        assert all_devices(c, lambda s: s.get("catalog_version") == v1.catalog_version
                           and s["catalog_update"]["snapshot"] == v1.snapshot_id, timeout=60)
        for i, d in enumerate(DEVICES):
            assert search(c, d, query, f"a{i}")["result"]["candidates"][0]["sku"] == expected

        a2 = publish_snapshot(Path(v2.snapshot), to=str(pub), url=f"{base}/{v2.snapshot_id}.tar", key=TEST_KEY)
        announce(dataclasses.replace(a2, key=None, signature=None), stores=["s1"], settings=mqtt)  # a forgery
        assert all_devices(c, lambda s: s["catalog_update"]["refused"] == 1, timeout=60)
        assert all("not signed" in latest(c, f"s1/{d}/status")["catalog_update"]["last_error"] for d in DEVICES)
        served = pub / f"{v2.snapshot_id}.tar"
        good = served.read_bytes()
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0xFF
        served.write_bytes(bytes(bad))  # corrupted on the server after it was announced
        announce(a2, stores=["s1"], settings=mqtt)
        assert all_devices(c, lambda s: s["catalog_update"]["refused"] == 2, timeout=60)
        for i, d in enumerate(DEVICES):
            st = latest(c, f"s1/{d}/status")
            assert "corrupt" in st["catalog_update"]["last_error"]
            assert st["catalog_update"]["snapshot"] == v1.snapshot_id
            reply = search(c, d, query, f"b{i}")  # still serving the old catalog
            assert reply["ok"] and reply["result"]["catalog_version"] == v1.catalog_version
            assert reply["result"]["candidates"][0]["sku"] == expected

        served.write_bytes(good)
        announce(a2, stores=["s1"], settings=mqtt)  # the same announcement again, the file repaired
        assert all_devices(c, lambda s: s.get("catalog_version") == v2.catalog_version, timeout=60)
        assert main(["fleet", "status", "--broker", f"127.0.0.1:{broker.port}", "--json", "--wait", "1"]) == 0

        c.publish("storelens/s1/d1/cmd/rollback", json.dumps({"id": "rb"}))
        assert c.wait(lambda: latest(c, "s1/d1/status").get("catalog_version") == v1.catalog_version, timeout=60)
        assert latest(c, "s1/d1/status")["catalog_update"]["rollbacks"] == 1
        assert latest(c, "s1/d2/status")["catalog_version"] == v2.catalog_version
    finally:
        c.stop()
    for p in devices:
        assert p.poll() is None, "a device process died"


def test_fleet_status_lists_devices(tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    c = Collector(broker.port, "storelens/#", client_id="fleet-status-test")
    try:
        status = {"schema": "storelens.status/1", "device": "d9", "store": "s9", "bundle": "b" * 16,
                  "catalog_version": 7, "catalog_update": {"snapshot": "abc", "refused": 2, "last_error": "corrupt"}}
        c.client.publish("storelens/s9/d9/status", json.dumps(status), qos=1, retain=True).wait_for_publish(5)
        c.client.publish("storelens/s9/d9/available", "online", qos=1, retain=True).wait_for_publish(5)
        c.client.publish("storelens/s9/catalog/available", json.dumps({"snapshot": "abc", "version": 7}), qos=1,
                         retain=True).wait_for_publish(5)
    finally:
        c.stop()
    assert main(["fleet", "status", "--broker", f"127.0.0.1:{broker.port}", "--wait", "0.5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["devices"]
    assert rows == [{"store": "s9", "device": "d9", "online": True, "bundle": "b" * 16, "catalog_version": 7,
                     "snapshot": "abc", "refused": 2, "last_error": "corrupt", "announced": "abc", "current": True}]
    assert main(["fleet", "status", "--broker", f"127.0.0.1:{broker.port}", "--wait", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "d9" in out and "1 devices, 1 online, 1 on their store's announced snapshot" in out
