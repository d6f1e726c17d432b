"""The chaos drill's own parts (:mod:`benchmarks.chaos`): its accounting, its gate against a real
Mosquitto, its steppable clock, and one fault run end to end through the real drill code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks._broker import Broker
from benchmarks._chaos_rig import Gate, Watcher, account, wait
from benchmarks._disk import can_mount

ROOT = Path(__file__).resolve().parents[1]


def test_account_counts_lost_duplicated_corrupted_and_erased() -> None:
    decided: dict[str, dict[str, Any]] = {"a": {"id": "a", "x": 1}, "b": {"id": "b", "x": 2}, "c": {"id": "c"},
                                          "d": {"id": "d"}}
    got = [json.dumps(m).encode() for m in (decided["a"], decided["a"], {"id": "b", "x": 3})] + [b"\xff"]
    r = account(decided, got, erased={"d"})
    assert r == {"decided": 4, "delivered": 2, "lost": 1, "erased_by_fault": 1, "duplicated": 1, "corrupted": 2}


def test_gate_cuts_and_restores_a_real_connection(broker: Broker) -> None:
    gate = Gate(broker.port)
    watcher = Watcher(broker.port, "chaos/t", client_id="gate-test")
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="behind-gate")
    client.reconnect_delay_set(1, 1)
    client.connect("127.0.0.1", gate.port, keepalive=5)
    client.loop_start()
    try:
        assert wait(client.is_connected, 10)
        client.publish("chaos/t", b'{"id": "1"}', qos=1).wait_for_publish(5)
        gate.close()
        assert wait(lambda: not client.is_connected(), 10)
        gate.open()
        assert wait(client.is_connected, 15)
        client.publish("chaos/t", b'{"id": "2"}', qos=1).wait_for_publish(5)
        assert wait(lambda: watcher.ids() == ["1", "2"], 10), watcher.ids()
    finally:
        client.loop_stop()
        watcher.stop()
        gate.stop()


def test_launcher_steps_the_wall_clock_only(tmp_path: Path) -> None:
    offset = tmp_path / "offset"
    offset.write_text(str(365 * 86400.0))
    code = ("import time, benchmarks._chaos_launch as l; from pathlib import Path; m = time.monotonic();"
            f"l.install_clock(Path({str(offset)!r})); time.sleep(0.3); print(time.time(), time.monotonic() - m)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert float(out[0]) - time.time() > 364 * 86400  # a year ahead
    assert 0.25 < float(out[1]) < 5  # the monotonic clock untouched


@pytest.mark.slow
@pytest.mark.skipif(can_mount() is not None, reason=str(can_mount()))
def test_one_drill_fault_end_to_end(tmp_path: Path) -> None:
    """`python -m benchmarks.chaos --only disk-full-after-outage`: the real runtime, broker and tmpfs."""
    out = tmp_path / "chaos.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.chaos", "--only", "disk-full-after-outage",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (row,) = json.loads(out.read_text())["faults"]
    assert row["lost"] == 0 and row["corrupted"] == 0 and row["recovered_without_restart"] is True
    assert row["decided"] == row["delivered"] > 0
    assert row["log_evidence"].get("outbox cannot write", 0) >= 1  # the disk did fill under it
