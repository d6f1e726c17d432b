"""Behaviour the README and the config reference promise, each checked with real parts: the ``busy`` reply
past 16 queued commands, ``mqtt.max_inflight`` against a real (paused) Mosquitto, the JSON log format of
``storelens run``, a corrupt on-device ``catalog.db`` as one clear line (not a traceback), and a corrupt
``outbox.db`` moved aside while the device keeps running."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

from benchmarks._broker import Broker
from edge.comms.commands import QUEUE_SIZE, CommandRouter
from edge.comms.mqtt import MqttLink
from edge.comms.outbox import Outbox
from edge.core.config import MqttSettings
from tests.ops_helpers import storelens, wait_for
from tests.runtime_helpers import Collector, demo_device

PREFIX = "storelens/s1/d1"


def test_commands_past_the_queue_are_answered_busy_and_the_rest_are_done() -> None:
    replies: list[tuple[str, dict]] = []
    lock = threading.Lock()

    def reply(topic: str, body: bytes) -> None:
        with lock:
            replies.append((topic, json.loads(body)))

    started, release = threading.Event(), threading.Event()

    def slow(args: dict) -> dict:
        started.set()
        assert release.wait(10)
        return {"n": args["n"]}

    router = CommandRouter(prefix="p", reply=reply)
    router.register("slow", slow)
    router.start()
    try:
        assert QUEUE_SIZE == 16
        router.on_message("p/cmd/slow", b'{"n": 0}')
        assert started.wait(10)  # the worker holds command 0: the queue is empty again
        for n in range(1, QUEUE_SIZE + 1):
            router.on_message("p/cmd/slow", json.dumps({"n": n}).encode())
        assert router.queued == QUEUE_SIZE and replies == []
        router.on_message("p/cmd/slow", b'{"n": 99}')  # the 17th waiting: refused at once
        assert replies == [("p/cmd/slow/reply", {"ok": False, "error": "busy: too many commands queued; retry later",
                                                 "code": "busy"})]
        assert router.counts["busy"] == 1
        release.set()
        assert wait_for(lambda: len(replies) == QUEUE_SIZE + 2)
        done = [r["result"]["n"] for _, r in replies[1:]]
        assert done == list(range(QUEUE_SIZE + 1))  # every queued command answered, in order; 99 never ran
    finally:
        release.set()
        router.stop()


def test_max_inflight_bounds_unacknowledged_publishes(tmp_path: Path, broker: Broker) -> None:
    """With the broker paused (no PUBACK comes), the link hands paho exactly mqtt.max_inflight messages."""
    collector = Collector(broker.port, f"{PREFIX}/#")
    s = MqttSettings(host=broker.host, port=broker.port, keepalive_s=30, max_inflight=3)
    link = MqttLink(settings=s, prefix=PREFIX, outbox=Outbox(path=tmp_path / "outbox.db"), client_id="dev")
    link.start()
    assert wait_for(lambda: link.connected)
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        for i in range(20):
            link.send(f"{PREFIX}/cam/match", json.dumps({"id": f"m{i}"}).encode(), msg_id=f"m{i}")
        assert wait_for(lambda: link.stats.inflight == 3)
        assert link.outbox.stats().depth == 20 and link.stats.inflight == 3  # the other 17 wait in the outbox
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    try:
        assert collector.wait(lambda: len(collector.of("/cam/match")) == 20, 20)
        assert [m["id"] for m in collector.json_of("/cam/match")] == [f"m{i}" for i in range(20)]
        assert wait_for(lambda: link.outbox.stats().depth == 0)
    finally:
        link.stop()
        collector.stop()


def _device(tmp_path: Path, *, log_format: str = "kv") -> Path:
    """A catalog of two demo products, a looping folder of their frames, and a config for `storelens run`."""
    data, frames = demo_device(tmp_path, price=10.0)
    cfg = tmp_path / "device.toml"
    cfg.write_text(f'[device]\nstore = "s1"\nid = "d1"\n[catalog]\ndata_dir = "{data}"\n'
                   f'[[cameras]]\nname = "cam"\nsource = "{frames}"\nfps = 10\nloop = true\n'
                   '[decision]\nthreshold = 0.9\nmargin = 0.05\n[ocr]\nenabled = false\n'
                   f'[logging]\nformat = "{log_format}"\n')
    return cfg


def test_json_log_format_is_one_json_object_a_line(tmp_path: Path) -> None:
    cfg = _device(tmp_path, log_format="json")
    res = storelens("run", "--config", str(cfg), "--no-mqtt", "--duration", "2", timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines, res.stderr
    records = [json.loads(ln) for ln in lines]  # every line parses: no kv line, no stray print
    for r in records:
        assert {"ts", "level", "logger", "msg"} <= set(r) and r["ts"].endswith("Z"), r
    assert any(r["logger"].startswith("storelens") for r in records)
    assert any(set(r) - {"ts", "level", "logger", "msg"} for r in records)  # extra={...} fields become keys


def test_corrupt_catalog_or_outbox_database_is_one_clear_line(tmp_path: Path) -> None:
    cfg = _device(tmp_path)
    data = tmp_path / "data"
    good = (data / "catalog.db").read_bytes()
    (data / "catalog.db").write_bytes(b"this is not a SQLite database " * 200)
    for wal in data.glob("catalog.db-*"):
        wal.unlink()
    res = storelens("catalog", "list", "--config", str(cfg))
    assert res.returncode == 7, (res.returncode, res.stderr)  # CatalogError
    assert "Traceback" not in res.stderr
    assert f"cannot open catalog database {data / 'catalog.db'}" in res.stderr and "move a corrupt file aside" \
        in res.stderr, res.stderr
    (data / "catalog.db").write_bytes(good)

    (data / "outbox.db").write_bytes(b"this is not a SQLite database either " * 200)
    res = storelens("run", "--config", str(cfg), "--duration", "2", timeout=120)  # MQTT on: the outbox opens
    # a damaged outbox is moved aside (kept for salvage) and the device keeps running on a fresh one (28c)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert f"outbox {data / 'outbox.db'} was damaged" in res.stderr and "moved aside" in res.stderr, \
        res.stderr[-3000:]
    assert list(data.glob("outbox.db.damaged-*"))  # nothing deleted
