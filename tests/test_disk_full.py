"""A disk that fills (issue 28, findings 11-14), on a real 3 MiB tmpfs with a real Mosquitto.

The outbox keeps what it cannot write in memory (bounded, counted), its worker never dies on
``database or disk is full``, its depth never drifts after a failed COMMIT, and delivery resumes
by itself when space returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks._broker import Broker
from benchmarks._disk import SmallDisk, can_mount, small_disk
from edge.comms.mqtt import MqttLink
from edge.comms.outbox import Outbox
from edge.core.config import MqttSettings
from tests.runtime_helpers import Collector

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
    broker.start()
    collector = Collector(broker.port, f"{PREFIX}/cam/#")
    try:
        assert _wait(lambda: link.connected)
        assert _wait(lambda: len(set(collector.of("/match"))) == 80), len(collector.of("/match"))
        disk.free()
        assert _wait(lambda: link.outbox.stats().depth == 0), link.outbox.stats()
        link.send(f"{PREFIX}/cam/match", b'{"id": "after"}', msg_id="after")
        assert _wait(lambda: b'{"id": "after"}' in collector.of("/match"))
        assert _wait(lambda: link.outbox.stats().depth == 0)
        assert link.outbox.stats().delivered == 81
    finally:
        link.stop(flush_timeout_s=0.5)
        collector.stop()
        broker.stop()
