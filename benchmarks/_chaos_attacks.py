"""The chaos drill's faults at the start and from outside: damaged databases, a flood of forged events.

Each registers itself in :data:`benchmarks._chaos_rig.FAULTS` (see :mod:`benchmarks.chaos`).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from benchmarks._chaos_rig import (
    FAULTS,
    PREFIX,
    STORE,
    Device,
    Rig,
    Watcher,
    delivered_all,
    fault,
    finish,
    more_decisions,
    settle,
    started,
    wait,
)

PAGE = 4096
FLOOD_S = 5.0


def truncate_half(path: Path) -> None:
    """Cut the file at the page boundary nearest its middle (a torn copy, a repaired file system)."""
    size = path.stat().st_size
    os.truncate(path, max(PAGE, size // 2 // PAGE * PAGE))


def garble_middle(path: Path) -> None:
    """Overwrite one page in the middle with garbage (bit rot, a bad sector)."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(max(PAGE, size // 2 // PAGE * PAGE))
        f.write(os.urandom(PAGE))


def readable_ids(path: Path) -> set[str]:
    """The outbox rows an independent reader still gets from a damaged file: each ``seq`` looked up on its
    own, so only rows on destroyed pages are missing (the drill's own reader, not the device's salvage)."""
    found: set[str] = set()
    raw = bytearray(path.read_bytes())
    if len(raw) >= 100 and len(raw) % PAGE == 0:  # a cut file: its header must not claim the lost pages
        raw[28:32] = (len(raw) // PAGE).to_bytes(4, "big")
    copy = path.with_name(path.name + ".drill-read")
    copy.write_bytes(bytes(raw))
    try:
        with closing(sqlite3.connect(copy)) as db:
            try:
                last = int(db.execute("SELECT MAX(seq) FROM sqlite_sequence").fetchone()[0] or 0)
            except sqlite3.Error:
                return found
            for seq in range(1, last + 1):
                try:
                    if (r := db.execute("SELECT msg_id FROM outbox WHERE seq = ?", (seq,)).fetchone()) is not None:
                        found.add(str(r[0]))
                except sqlite3.Error:
                    continue
    except sqlite3.Error:
        pass
    finally:
        copy.unlink(missing_ok=True)
    return found


def _start_on_damage(rig: Rig, name: str, file: str, damage: Callable[[Path], None]) -> dict[str, Any]:
    """Phase 1 queues messages during an outage and stops cleanly (they stay in the outbox); the file is
    damaged; phase 2 starts on it with the broker reachable. A device that refuses to start on the damage
    (its exit code and message are kept) gets the operator's fix — the damaged file moved aside and, for the
    catalog, restored from the one installed — and a third start; recovery then needed the operator
    (``n/a``)."""
    with rig.device(name) as (dev, _disk, gate, watcher):
        gate.close()
        dev.start()
        wait(lambda: len(dev.outbox_ids()) >= QUEUED, 120)
        dev.stop()
        queued = set(dev.outbox_ids())
        target = dev.data / file
        damage(target)
        erased = queued - readable_ids(dev.data / "outbox.db") if file == "outbox.db" else set()
        gate.open()
        dev.start()
        ok = wait(lambda: not dev.alive or (len(dev.decided()) >= len(queued) + AFTER_START
                                            and delivered_all_but(dev, watcher, erased)), 120, step=0.2) and dev.alive
        refused: dict[str, Any] = {}
        if not dev.alive:  # refused to start on the damage: what it said, then the operator's restore
            refused = {"exit_code_on_damage": dev.stop(), "message_on_damage": _last_error(dev)}
            for extra in ("", "-wal", "-shm"):  # moved aside, as the error message says
                if (damaged := Path(f"{target}{extra}")).exists():
                    damaged.rename(f"{damaged}.operator-aside")
            if (rig.template / file).exists():  # the catalog: restored from what was installed
                shutil.copy2(rig.template / file, target)
            dev.start()
            wait(lambda: len(dev.decided()) >= len(queued) + AFTER_START and delivered_all(dev, watcher), 120, 0.2)
        return finish(name, FAULTS[name][1], dev, watcher, recovered=ok if not refused else None, erased=erased,
                      queued_before=len(queued), **refused)


def _last_error(dev: Device) -> str:
    lines = [line for line in dev.log_tail(20_000).splitlines() if "error" in line]
    return lines[-1][:400] if lines else ""


AFTER_START = 6
QUEUED = 24  # messages queued in the outbox before the damage


def delivered_all_but(dev: Device, watcher: Watcher, erased: set[str]) -> bool:
    return set(dev.decided()) - erased <= set(watcher.ids())


@fault("outbox-truncated", "outbox.db truncated at start")
def outbox_truncated(rig: Rig, name: str) -> dict[str, Any]:
    return _start_on_damage(rig, name, "outbox.db", truncate_half)


@fault("outbox-corrupted", "outbox.db corrupted at start")
def outbox_corrupted(rig: Rig, name: str) -> dict[str, Any]:
    return _start_on_damage(rig, name, "outbox.db", garble_middle)


@fault("catalog-truncated", "catalog.db truncated at start")
def catalog_truncated(rig: Rig, name: str) -> dict[str, Any]:
    return _start_on_damage(rig, name, "catalog.db", truncate_half)


@fault("catalog-corrupted", "catalog.db corrupted at start")
def catalog_corrupted(rig: Rig, name: str) -> dict[str, Any]:
    return _start_on_damage(rig, name, "catalog.db", garble_middle)


# -- a flood of forged events --------------------------------------------------------------------------

def flood(port: int, seconds: float) -> int:
    """Publish forged events and commands as fast as one client can for ``seconds``; returns how many."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="chaos-flood")
    c.connect("127.0.0.1", port)
    c.loop_start()
    basket = json.dumps({"id": "forged", "items": [{"sku": f"X{i}", "qty": 1} for i in range(800)]})
    forged = [(f"{PREFIX}/events/basket", basket.encode()),
              (f"{PREFIX}/events/scan", b'{"barcode": "0000000000000", "ts": 1}'),
              (f"{PREFIX}/cmd/enroll", b'{"sku": "EVIL", "name": "evil", "images": []}'),
              (f"{PREFIX}/cmd/search", b"x" * 1_000_000),
              (f"storelens/{STORE}/catalog/available", b'{"snapshot": "../../etc", "url": "http://127.0.0.1:1/x"}')]
    n, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        topic, payload = forged[n % len(forged)]
        c.publish(topic, payload, qos=0)
        n += 1
        if n % 200 == 0:
            time.sleep(0.01)  # let paho's thread drain its queue
    c.disconnect()
    c.loop_stop()
    return n


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


@fault("forged-flood", "flood of forged events and commands")
def forged_flood(rig: Rig, name: str) -> dict[str, Any]:
    with rig.device(name) as (dev, _disk, _gate, watcher):
        started(dev, watcher)
        assert dev.proc is not None
        before = rss_mib(dev.proc.pid)
        sent: list[int] = []
        t = threading.Thread(target=lambda: sent.append(flood(rig.broker.port, FLOOD_S)))
        t.start()
        more_decisions(dev, 3, timeout=FLOOD_S + 30)  # the loop keeps deciding under the flood
        t.join()
        during = rss_mib(dev.proc.pid) if dev.alive else None
        return finish(name, FAULTS[name][1], dev, watcher, recovered=settle(dev, watcher), flooded=sent[0],
                      rss_mib_before=before, rss_mib_after=during)
