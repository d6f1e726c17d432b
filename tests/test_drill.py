"""Fault drill with the real runtime in a subprocess and a real Mosquitto: Last Will on SIGKILL, graceful
SIGTERM, and SIGKILL during a broker outage with >= 10 messages undelivered, then restart: every decision
received at least once (ids dedupe), duplicates only of messages the killed process had not seen acknowledged."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks._broker import Broker
from tests.runtime_helpers import Collector, TinyOnnxEncoder, write_catalog, write_frames

PREFIX = "storelens/s1/drill"
ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, broker: Broker, frames: Path) -> Path:
    cfg = tmp_path / "drill.toml"
    cfg.write_text(f"""
jsonl_out = "{tmp_path / 'decisions.jsonl'}"
[device]
store = "s1"
id = "drill"
[catalog]
data_dir = "{tmp_path / 'data'}"
[[cameras]]
name = "cam"
source = "{frames}"
loop = true
fps = 25
[gate]
steady_frames = 0
[decision]
window = 3
min_frames = 2
heartbeat_s = 3600
[mqtt]
host = "127.0.0.1"
port = {broker.port}
keepalive_s = 5
stats_interval_s = 1
flush_timeout_s = 5
""")
    return cfg


@pytest.fixture
def setup(tmp_path: Path, broker: Broker, tiny_onnx: Path) -> Iterator[tuple[Path, Path, Collector]]:
    # a kiosk: each product, then the empty tray (an item ends when the tray empties)
    frames = write_frames(tmp_path / "frames", ["RED", "EMPTY", "GREEN", "EMPTY", "BLUE", "EMPTY", "YELLOW", "EMPTY"],
                          per_sku=5)
    catalog = write_catalog(tmp_path / "catalog.json", TinyOnnxEncoder(tiny_onnx),
                            ["RED", "GREEN", "BLUE", "YELLOW", "EMPTY"])
    collector = Collector(broker.port, f"{PREFIX}/#", client_id="drill-collector")  # returns once subscribed
    yield write_config(tmp_path, broker, frames), catalog, collector
    collector.stop()


def start_runtime(cfg: Path, onnx: Path, catalog: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORELENS_")}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.runtime_helpers", str(cfg), str(onnx), str(catalog)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def decided_ids(tmp_path: Path) -> list[str]:
    path = tmp_path / "decisions.jsonl"
    return [json.loads(x)["id"] for x in path.read_text().splitlines()] if path.exists() else []


def test_last_will_offline_on_sigkill(tmp_path: Path, broker: Broker, tiny_onnx: Path,
                                      setup: tuple[Path, Path, Collector]) -> None:
    cfg, catalog, col = setup
    proc = start_runtime(cfg, tiny_onnx, catalog, tmp_path / "rt.log")
    try:
        assert col.wait(lambda: col.of("/available")[-1:] == [b"online"], timeout=20), (tmp_path / "rt.log").read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert col.wait(lambda: col.of("/available")[-1:] == [b"offline"], timeout=10)
    finally:
        proc.kill()
    late = Collector(broker.port, f"{PREFIX}/available", client_id="late")
    assert late.wait(lambda: late.messages == [(f"{PREFIX}/available", b"offline", True)])
    late.stop()


def test_sigterm_drains_flushes_and_exits_zero(tmp_path: Path, tiny_onnx: Path,
                                              setup: tuple[Path, Path, Collector]) -> None:
    cfg, catalog, col = setup
    proc = start_runtime(cfg, tiny_onnx, catalog, tmp_path / "rt.log")
    assert col.wait(lambda: len(col.of("/cam/match")) >= 5, timeout=20), (tmp_path / "rt.log").read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert col.wait(lambda: col.of("/available")[-1:] == [b"offline"])
    received = {m["id"] for m in col.json_of("/cam/match")}
    assert col.wait(lambda: set(decided_ids(tmp_path)) <= {m["id"] for m in col.json_of("/cam/match")})
    assert len(received) >= 5
    summary = json.loads((tmp_path / "rt.log").read_text().split("SUMMARY ")[-1])
    assert summary["outbox_left"] == 0 and summary["outbox"]["depth"] == 0
    assert summary["outbox"]["written"] == summary["outbox"]["delivered"] == len(decided_ids(tmp_path))


def outbox_ids(tmp_path: Path) -> list[str]:
    """Ids of the messages the runtime's outbox holds (written, not yet acknowledged by the broker)."""
    path = tmp_path / "data" / "outbox.db"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        return [r[0] for r in db.execute("SELECT msg_id FROM outbox ORDER BY seq")]


def test_fault_drill_sigkill_with_undelivered_messages(tmp_path: Path, broker: Broker, tiny_onnx: Path,
                                                      setup: tuple[Path, Path, Collector]) -> None:
    """Broker away, >= 10 decisions waiting in the outbox, SIGKILL; broker back, restart: none lost, and a
    message arrives twice only if the killed process had not seen it acknowledged."""
    cfg, catalog, col = setup
    log = tmp_path / "rt.log"
    proc = start_runtime(cfg, tiny_onnx, catalog, log)
    try:
        assert col.wait(lambda: len(col.of("/cam/match")) >= 3, timeout=20), log.read_text()
        broker.stop()  # outage: decisions keep coming, into the outbox
        assert col.wait(lambda: len(outbox_ids(tmp_path)) >= 10, timeout=30), log.read_text()
        proc.send_signal(signal.SIGKILL)  # dies with them undelivered
        proc.wait(10)
        undelivered = outbox_ids(tmp_path)
        assert len(undelivered) >= 10
        broker.start()
        proc = start_runtime(cfg, tiny_onnx, catalog, log)  # same outbox: replays what was left
        assert col.wait(lambda: set(undelivered) <= {m["id"] for m in col.json_of("/cam/match")}, timeout=30)
        n = len(decided_ids(tmp_path))
        assert col.wait(lambda: len(decided_ids(tmp_path)) >= n + 5, timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
    decided = decided_ids(tmp_path)
    assert col.wait(lambda: set(decided) <= {m["id"] for m in col.json_of("/cam/match")}, timeout=15)
    received = [m["id"] for m in col.json_of("/cam/match")]
    lost = set(decided) - set(received)
    duplicates = [i for i, c in Counter(received).items() if c > 1]
    print(f"drill: decisions={len(decided)} undelivered_at_kill={len(undelivered)} received={len(received)} "
          f"unique={len(set(received))} duplicates={len(duplicates)} lost={len(lost)}")
    assert lost == set() and len(decided) >= 10
    assert set(duplicates) <= set(undelivered), "a duplicate that was already acknowledged before the kill"
    assert len(decided) == len(set(decided))  # the runtime never writes one decision twice
