"""The rig the chaos drill runs each fault on: a real device process, a real broker, a gate, a watcher.

* :class:`Gate` — a TCP relay between the device and Mosquitto. Closed, it cuts the device's
  connection and refuses new ones (a network outage, or holding the device back after a broker
  restart until the watcher has subscribed again, so no message is published to nobody).
* :class:`Watcher` — a real MQTT subscriber (persistent session, subscribing again on every
  connect) that keeps every match message's raw payload.
* :class:`Device` — ``storelens run`` (through :mod:`benchmarks._chaos_launch`, for a steppable
  wall clock) on a real catalog :class:`~edge.catalog.store.Store` with the embedded image bundle,
  its ``catalog.data_dir`` on a small tmpfs (:mod:`benchmarks._disk`) and its JSONL record of every
  decision (``jsonl_out``) on the normal disk: that record is what the device decided.
* :func:`account` — decided vs received: delivered, lost, duplicated, corrupted.
* :data:`FAULTS`, :class:`Rig` and the steps every fault shares (start, settle, finish).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._broker import Broker, free_port
from benchmarks._disk import SmallDisk

ROOT = Path(__file__).resolve().parents[1]
STORE, DEVICE = "chaos", "d1"
PREFIX = f"storelens/{STORE}/{DEVICE}"


def wait(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


# -- the gate ----------------------------------------------------------------------------------------

class Gate:
    """A TCP relay 127.0.0.1:``port`` -> the broker's port, which can be closed (connections cut) and opened."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.is_open = True
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, name="gate", daemon=True).start()

    def close(self) -> None:
        """Cut every relayed connection and refuse new ones."""
        self.is_open = False
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def open(self) -> None:
        self.is_open = True

    def stop(self) -> None:
        self.close()
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self.is_open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


# -- the watcher -------------------------------------------------------------------------------------

class Watcher:
    """A store system's subscriber: every match message's raw payload (subscribes again on each connect)."""

    def __init__(self, port: int, topic: str = f"{PREFIX}/+/match", *, client_id: str = "chaos-watcher") -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.payloads: list[bytes] = []
        self.status: dict[str, Any] = {}  # the device's latest retained status
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe([(topic, 1), (f"{PREFIX}/status", 1)])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_disconnect = lambda *_: self.subscribed.clear()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError(f"the broker did not acknowledge the subscription to {topic}")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        if msg.topic == f"{PREFIX}/status":
            with suppress(ValueError):
                self.status = json.loads(msg.payload)
            return
        with self._lock:
            self.payloads.append(bytes(msg.payload))

    def ids(self) -> list[str]:
        out = []
        with self._lock:
            payloads = list(self.payloads)
        for p in payloads:
            try:
                out.append(str(json.loads(p)["id"]))
            except (ValueError, KeyError, TypeError):
                out.append("<unreadable>")
        return out

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the device --------------------------------------------------------------------------------------

class Device:
    """``storelens run`` in a subprocess on ``data`` (see the module docstring); restartable."""

    def __init__(self, work: Path, *, data: Path, frames: Path, broker_port: int, thresholds: tuple[float, float],
                 extra_toml: str = "") -> None:
        self.work = work
        self.data = data
        self.jsonl = work / "decided.jsonl"
        self.clock_file = work / "clock_offset"
        self.log_path = work / "device.log"
        self.config = work / "device.toml"
        self.config.write_text(
            f'jsonl_out = "{self.jsonl}"\n[device]\nstore = "{STORE}"\nid = "{DEVICE}"\n'
            f'[catalog]\ndata_dir = "{data}"\n'
            f'[[cameras]]\nname = "cam"\nsource = "{frames}"\nloop = true\nfps = 15\n'
            f"[decision]\nwindow = 5\nmin_frames = 3\nheartbeat_s = 2\nthreshold = {thresholds[0]}\n"
            f"margin = {thresholds[1]}\n[ocr]\nenabled = false\n"
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\nkeepalive_s = 5\nreconnect_max_s = 2\n'
            "max_inflight = 2\n"  # a backlog waits in the outbox, not in paho's memory: the outbox is under test
            f"flush_timeout_s = 10\nstats_interval_s = 5\n{extra_toml}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CHAOS_CLOCK_FILE": str(self.clock_file),
               "CHAOS_PRUNE_EVERY_S": "1"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks._chaos_launch", "run", "--config",
                                          str(self.config)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                         stderr=log)
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def step_clock(self, offset_s: float) -> None:
        self.clock_file.write_text(str(offset_s))

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (drain and flush) and the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def decided(self) -> dict[str, dict[str, Any]]:
        """Every decision the device recorded: id -> the match message (the JSONL line without its topic)."""
        out: dict[str, dict[str, Any]] = {}
        if self.jsonl.exists():
            for line in self.jsonl.read_text().splitlines():
                with suppress(ValueError):
                    msg = json.loads(line)
                    msg.pop("topic", None)
                    out[str(msg["id"])] = msg
        return out

    def outbox_ids(self) -> list[str]:
        path = self.data / "outbox.db"
        if not path.exists():
            return []
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
                return [r[0] for r in db.execute("SELECT msg_id FROM outbox ORDER BY seq")]
        except sqlite3.Error:
            return []

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


# -- accounting --------------------------------------------------------------------------------------

def account(decided: dict[str, dict[str, Any]], payloads: list[bytes], *,
            erased: set[str] | None = None) -> dict[str, int]:
    """Decided vs received. ``corrupted``: a received message that does not read back as exactly what was
    decided (or names no decision). ``erased``: ids whose stored bytes the fault itself destroyed."""
    got: Counter[str] = Counter()
    corrupted = 0
    for p in payloads:
        try:
            msg = json.loads(p)
            mid = str(msg["id"])
        except (ValueError, KeyError, TypeError):
            corrupted += 1
            continue
        got[mid] += 1
        if got[mid] == 1 and decided.get(mid) != msg:
            corrupted += 1
    erased = (erased or set()) - set(got)
    delivered = len(set(decided) & set(got))
    return {"decided": len(decided), "delivered": delivered, "lost": len(set(decided) - set(got) - erased),
            "erased_by_fault": len(erased & set(decided)), "duplicated": sum(1 for n in got.values() if n > 1),
            "corrupted": corrupted}


def copy_tree(src: Path, dst: Path) -> None:
    """``src``'s files into ``dst`` (which may be a mount point that already exists)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_dir():
            shutil.copytree(p, dst / p.name)
        else:
            shutil.copy2(p, dst / p.name)


# -- the faults' registry and shared steps ---------------------------------------------------------

SETTLE_S = 90.0  # longest wait for a backlog to arrive once a fault cleared
AFTER = 4  # decisions made after a fault cleared that must arrive too (recovery)
EVIDENCE = ("outbox cannot write", "outbox writes again", "cannot write the health status file", "was damaged",
            "disagrees with the catalog", "Traceback", "disconnected from broker")  # counted in the device log
FaultFn = Callable[["Rig", str], dict[str, Any]]
FAULTS: dict[str, tuple[FaultFn, str]] = {}


def fault(name: str, label: str) -> Callable[[FaultFn], FaultFn]:
    def register(fn: FaultFn) -> FaultFn:
        FAULTS[name] = (fn, label)
        return fn
    return register


@dataclass
class Rig:
    """What every fault shares: the work folder, the broker, the template catalog and camera clip."""

    work: Path
    broker: Broker
    template: Path
    frames: Path
    thresholds: tuple[float, float]

    @contextlib.contextmanager
    def device(self, name: str, *, extra_toml: str = "", size_mib: int = 3
               ) -> Iterator[tuple[Device, SmallDisk, Gate, Watcher]]:
        """A fresh device on its own tmpfs (the template catalog copied in), behind its own gate."""
        folder = self.work / name
        folder.mkdir(parents=True)
        disk = SmallDisk(folder / "disk", size_mib=size_mib).mount()
        gate = Gate(self.broker.port)
        watcher = Watcher(self.broker.port, client_id=f"watch-{name}")
        try:
            copy_tree(self.template, disk.path / "data")
            yield Device(folder, data=disk.path / "data", frames=self.frames, broker_port=gate.port,
                         thresholds=self.thresholds, extra_toml=extra_toml), disk, gate, watcher
        finally:
            with contextlib.suppress(Exception):
                watcher.stop()
            gate.stop()
            disk.unmount()


def delivered_all(dev: Device, watcher: Watcher) -> bool:
    return set(dev.decided()) <= set(watcher.ids())


def settle(dev: Device, watcher: Watcher) -> bool:
    """After a fault cleared: the backlog and ``AFTER`` new decisions arrive, from the same process."""
    n = len(dev.decided())
    ok = wait(lambda: len(dev.decided()) >= n + AFTER and delivered_all(dev, watcher), SETTLE_S)
    return ok and dev.alive  # the drill never restarts a live device: alive means the same process


def more_decisions(dev: Device, n: int, timeout: float = 60) -> bool:
    start = len(dev.decided())
    return wait(lambda: len(dev.decided()) >= start + n, timeout)


def started(dev: Device, watcher: Watcher) -> None:
    """Start and wait for two newly delivered decisions (the device is up, deciding and connected)."""
    before = len(set(dev.decided()) & set(watcher.ids()))
    dev.start()
    if not wait(lambda: len(set(dev.decided()) & set(watcher.ids())) >= before + 2, 120):
        raise RuntimeError(f"the device did not start delivering; its log ends:\n{dev.log_tail()}")


def finish(name: str, label: str, dev: Device, watcher: Watcher, *, recovered: bool | None,
           erased: set[str] | None = None, **extra: Any) -> dict[str, Any]:
    """Stop the device (drain and flush), wait for stragglers, count."""
    rc = dev.stop()
    wait(lambda: delivered_all(dev, watcher), 20)
    sizes = sorted(((p.stat().st_size, str(p.relative_to(dev.data))) for p in dev.data.rglob("*") if p.is_file()),
                   reverse=True)
    extra.setdefault("largest_files", [f"{name} {size // 1024} KiB" for size, name in sizes[:4]])
    log = dev.log_tail(10_000_000)
    evidence = {k: log.count(k) for k in EVIDENCE if k in log}
    return {"fault": label, "name": name, **account(dev.decided(), list(watcher.payloads), erased=erased),
            "recovered_without_restart": recovered, "exit_code": rc, "device_starts": dev.starts,
            "log_evidence": evidence, **extra}


