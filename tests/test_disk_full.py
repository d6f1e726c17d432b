"""A disk that fills (issue 28, findings 11-14), on a real 3 MiB tmpfs with a real Mosquitto.

The outbox keeps what it cannot write in memory (bounded, counted), its worker never dies on
``database or disk is full``, its depth never drifts after a failed COMMIT, and delivery resumes
by itself when space returns.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks._broker import Broker, free_port
from benchmarks._disk import SmallDisk, can_mount, small_disk
from edge.comms.mqtt import MqttLink
from edge.comms.outbox import Outbox
from edge.core.config import MqttSettings, load_settings
from edge.ops.health import STATUS_FILE, Thresholds, evaluate, read_status
from edge.pipeline.factory import assemble_runtime
from tests.runtime_helpers import Collector, NumpyMatcher, TinyOnnxEncoder, product_image, write_catalog

PREFIX = "storelens/s1/d1"
pytestmark = pytest.mark.skipif(can_mount() is not None, reason=str(can_mount()))


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with small_disk(tmp_path / "disk") as d:
        yield d


def _wait(cond, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def test_worker_survives_a_full_disk_and_delivers_when_space_returns(tmp_path: Path, disk: SmallDisk) -> None:
    """Finding 11: acks on a full disk used to kill the worker; 80 messages then waited for a restart."""
    broker = Broker.on_free_port(tmp_path / "broker")
    s = MqttSettings(host=broker.host, port=broker.port, keepalive_s=5, reconnect_min_s=1, reconnect_max_s=1)
    link = MqttLink(settings=s, prefix=PREFIX, outbox=Outbox(path=disk.path / "outbox.db"), client_id="dev")
    link.start()  # no broker yet: the messages wait on disk
    for i in range(80):
        link.send(f"{PREFIX}/cam/match", json.dumps({"id": f"m{i}", "pad": "x" * 200}).encode(), msg_id=f"m{i}")
    disk.fill()
    for i in range(30):  # decisions while the disk is full (the old outbox raised here and lost them)
        with contextlib.suppress(sqlite3.Error):
            link.send(f"{PREFIX}/cam/match", json.dumps({"id": f"f{i}", "pad": "y" * 8000}).encode(), msg_id=f"f{i}")
    broker.start()  # PUBACKs arrive while the disk is still full (the old worker died on their deletes)
    collector = Collector(broker.port, f"{PREFIX}/cam/#")
    try:
        assert _wait(lambda: link.connected)
        assert _wait(lambda: len({json.loads(p)["id"] for p in collector.of("/match")}) == 110), len(
            collector.of("/match"))
        assert link.outbox.stats().write_errors > 0  # the disk did refuse writes
        disk.free()
        assert _wait(lambda: link.outbox.stats().depth == 0), link.outbox.stats()
        link.send(f"{PREFIX}/cam/match", b'{"id": "after"}', msg_id="after")
        assert _wait(lambda: b'{"id": "after"}' in collector.of("/match"))
        assert _wait(lambda: link.outbox.stats().depth == 0)
        assert link.outbox.stats().delivered == 111
    finally:
        link.stop(flush_timeout_s=0.5)
        collector.stop()
        broker.stop()


def _rows(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        db.close()


def test_depth_never_drifts_after_a_failed_commit(disk: SmallDisk) -> None:
    """Finding 13: a failed COMMIT used to leave the in-memory depth counting rows that were never written,
    and the bound then evicted real undelivered messages as "full"."""
    ob = Outbox(path=disk.path / "outbox.db", max_messages=50)
    for i in range(10):
        ob.put(msg_id=f"a{i}", topic="t/match", payload=b"x" * 300)
    disk.fill()
    for i in range(30):
        with contextlib.suppress(sqlite3.Error):  # the old outbox raised here; this one holds them in memory
            ob.put(msg_id=f"b{i}", topic="t/match", payload=b"y" * 300)
    assert ob.stats().depth == 40
    disk.free()
    for i in range(15):
        ob.put(msg_id=f"c{i}", topic="t/match", payload=b"z" * 300)
    s = ob.stats()
    assert _rows(ob.path) == s.depth == 50, s  # 55 written, bound 50
    assert s.dropped_full == 5 and [m.msg_id for m in ob.pending(limit=100)][:3] == ["a5", "a6", "a7"]
    assert s.write_errors > 0 and s.in_memory == 0  # the disk refused, and what memory held is on disk now
    ob.close()


def test_frame_loop_keeps_running_through_heartbeats_on_a_full_disk(
        tmp_path: Path, disk: SmallDisk, broker: Broker, tiny_onnx: Path) -> None:
    """Finding 12: a heartbeat on a full disk used to raise out of the frame loop (decisions were guarded,
    heartbeats not); now it is held in memory, the loop goes on, and everything arrives once space returns."""
    enc = TinyOnnxEncoder(tiny_onnx)
    matcher = NumpyMatcher(write_catalog(tmp_path / "catalog.json", enc, ["RED", "BLUE"]), enc)
    settings = load_settings(None, **{
        "device": {"store": "s1", "id": "d1"}, "catalog": {"data_dir": str(disk.path / "data")},
        "cameras": [{"name": "cam", "source": "unused", "fps": 30}], "gate": {"steady_frames": 1},
        "decision": {"window": 3, "min_frames": 2, "heartbeat_s": 0.2},
        "mqtt": {"host": broker.host, "port": broker.port, "stats_interval_s": 0.5},
        "health": {"heartbeat_s": 0.1}, "metrics": {"enabled": True, "port": free_port()}})
    collector = Collector(broker.port, f"{PREFIX}/cam/#")
    rt = assemble_runtime(settings=settings, encoder=enc, matcher=matcher, out=io.StringIO(),
                          sources={"cam": lambda: _Steady("RED")})
    stop = threading.Event()
    loop = threading.Thread(target=rt.run, args=(stop,), kwargs={"max_seconds": 60})
    rt.start()
    loop.start()
    try:
        assert _wait(lambda: rt.counts["decisions"] >= 1 and rt.link is not None and rt.link.connected)
        disk.fill()
        beats = rt.counts["heartbeats"]
        assert _wait(lambda: rt.counts["heartbeats"] >= beats + 5 and rt.outbox.stats().in_memory > 0)
        assert loop.is_alive()
        assert _wait(lambda: any(p.check == "disk" for p in evaluate(read_status(disk.path / "data" / STATUS_FILE),
                                                                     Thresholds())))  # health, status, metrics
        assert rt.status()["outbox"]["failing"] and rt.status()["outbox"]["write_errors"] > 0
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics.port}/metrics", timeout=5).read().decode()
        assert re.search(r"^storelens_outbox_write_errors_total [1-9]", scrape, re.M), scrape[-2000:]
        disk.free()
        assert _wait(lambda: rt.outbox.stats().in_memory == 0 and rt.outbox.stats().depth == 0)
        assert loop.is_alive()
    finally:
        stop.set()
        loop.join()
        summary = rt.shutdown()
        collector.stop()
    ids = [json.loads(p)["id"] for p in collector.of("/cam/match")]
    assert len(set(ids)) == summary["decisions"] and summary["outbox_left"] == 0


class _Steady:
    """A camera that keeps showing one product (noisy frames): the loop sends only heartbeats after the vote."""

    def __init__(self, sku: str) -> None:
        self.sku, self.rng = sku, np.random.default_rng(0)

    def read(self) -> np.ndarray:
        time.sleep(1 / 30)
        return product_image(self.sku, rng=self.rng)

    def close(self) -> None:
        pass


def test_catalog_writes_on_a_full_disk_fail_clearly_and_heal(tmp_path: Path, disk: SmallDisk, tiny_onnx: Path) -> None:
    """Catalog writes that hit a full disk — in SQLite, in a photo, or in the index after the commit — are a
    CatalogError saying so (the old code raised `database or disk is full` / a JPEG-format error), and once
    there is room the next reload leaves catalog and index agreeing, the new product matchable."""
    import cv2

    from edge.catalog.store import Store
    from edge.core.errors import CatalogError
    from tests.encoders_for_tests import TinyImageEncoder, TrigramTextEncoder
    from tests.encoders_for_tests import product_image as photo

    img = tmp_path / "p.jpg"
    cv2.imwrite(str(img), photo(42))
    store = Store(data_dir=disk.path / "data", image_encoder=TinyImageEncoder(tiny_onnx),
                  text_encoder=TrigramTextEncoder())
    try:
        for i in range(20):
            store.enroll(f"SKU{i}", name=f"product {i}", images=[img])
        failures: list[int] = []
        for n, leave in enumerate((0, 16 << 10, 64 << 10, 96 << 10)):  # full at different stages of a write
            disk.fill(leave=leave)
            for images in ([img], [photo(n)]):  # a photo on file, a photo sent as pixels (saved as JPEG)
                try:
                    store.enroll(f"FULL{n}-{len(failures)}", name="late product", images=images)
                except CatalogError as e:
                    assert "disk is full" in e.message and "free space" in (e.hint or "")
                    failures.append(leave)
            disk.free()
            store.reload()  # the catalog and the index agree again
            for modality in ("image", "text"):
                meta = store.index_meta(modality)
                assert meta is not None and meta.catalog_version == store.catalog.version
                assert meta.vectors == store.catalog.vector_counts(modality, meta.fingerprint)[0]
        assert failures, "the disk never filled"
    finally:
        store.close()
