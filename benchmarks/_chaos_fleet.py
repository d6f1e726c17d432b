"""The chaos drill's catalog-snapshot faults: SIGKILL during an install, and every malicious snapshot.

The device trusts a key made for the drill (``fleet.trusted_keys``) and reads snapshots from a
mounted folder (``fleet.snapshot_dir``, file URLs); announcements go, retained, on
``storelens/<store>/catalog/available`` as ``storelens catalog publish`` sends them. The malicious
cases are 28a's :func:`benchmarks.chaos_snapshots.malicious_snapshots` (findings 1-6), made from a
good snapshot of the device's own catalog. Each registers itself in
:data:`benchmarks._chaos_rig.FAULTS` (see :mod:`benchmarks.chaos`).
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks._chaos_rig import (
    FAULTS,
    STORE,
    Device,
    Rig,
    Watcher,
    delivered_all,
    fault,
    finish,
    settle,
    started,
    wait,
)

SNAPSHOT_DISK_MIB = 24  # an install unpacks a copy of the catalog beside the live one


def _key_and_toml(folder: Path) -> tuple[Any, str, Path]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.fleet.signing import public_key_text

    key = Ed25519PrivateKey.generate()
    pub = folder / "pub"
    pub.mkdir(parents=True, exist_ok=True)
    toml = f'[fleet]\ntrusted_keys = ["{public_key_text(key.public_key())}"]\nsnapshot_dir = "{pub}"\n'
    return key, toml, pub


def _announce(port: int, payload: bytes) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="chaos-publisher")
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(f"storelens/{STORE}/catalog/available", payload, qos=1, retain=True).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def _counts(watcher: Watcher) -> tuple[int, int]:
    cu = watcher.status.get("catalog_update") or {}
    return int(cu.get("installed", 0)), int(cu.get("refused", 0))


def _good_snapshot(rig: Rig, out: Path, *, extra: bool) -> Path:
    """A snapshot of the template catalog (``extra``: with one more product, so it is a new version)."""
    from benchmarks.chaos_snapshots import snapshot_of
    from edge.catalog.store import Store
    from edge.core.config import ModelSettings
    from edge.models.encoders import load_image_encoder
    from edge.pipeline.demo import DEMO_PRODUCTS, reference_images

    encoder = load_image_encoder(ModelSettings())
    data = out / "catalog"
    shutil.copytree(rig.template, data)
    if extra:
        store = Store(data_dir=data, image_encoder=encoder, dtype="i8")
        p = DEMO_PRODUCTS[0]
        store.enroll("CHAOS-EXTRA", name="Extra product", images=reference_images(p, seed=7))
        store.close()
    return snapshot_of(data, out / "snapshots", bundle=encoder.fingerprint, dtype="i8")


@fault("malicious-snapshots", "malicious snapshots (findings 1-6)")
def malicious(rig: Rig, name: str) -> dict[str, Any]:
    """Each malicious case announced in turn while the device decides; a case counts as corruption when the
    device did what the case must not do (installed a refused one, lost a victim file, refused a safe one)."""
    from benchmarks.chaos_snapshots import malicious_snapshots

    folder = rig.work / f"{name}-snapshots"
    key, toml, _pub = _key_and_toml(folder / "snap")
    good = _good_snapshot(rig, folder / "good", extra=False)
    with rig.device(name, extra_toml=toml, size_mib=SNAPSHOT_DISK_MIB) as (dev, _disk, _gate, watcher):
        started(dev, watcher)
        cases = sorted(malicious_snapshots(good, folder / "snap", key=key, data_dir=dev.data),
                       key=lambda c: not c.refused)  # the installable ones last
        outcomes: list[dict[str, Any]] = []
        for case in cases:
            before = _counts(watcher)
            _announce(rig.broker.port, case.payload)
            wait(functools.partial(_changed, watcher, before), 120, step=0.1)
            after = _counts(watcher)
            refused = after[1] > before[1]
            error = str((watcher.status.get("catalog_update") or {}).get("last_error") or "")
            harm = refused != case.refused or (case.victim is not None and not case.victim.exists())
            outcomes.append({"case": case.name, "finding": case.finding, "refused": refused, "expected_refused":
                             case.refused, "harm": harm, "reason_as_expected": case.expect in error or not refused,
                             "answered": after != before})
        row = finish(name, FAULTS[name][1], dev, watcher, recovered=settle(dev, watcher), cases=outcomes)
    row["corrupted"] += sum(bool(o["harm"] or not o["answered"]) for o in outcomes)
    return row


KILL_DELAYS_S = (0.0, 0.05, 0.15, 0.3, 0.6, 1.2, 2.5)  # after the install got under way


@fault("sigkill-install", "SIGKILL during a snapshot install")
def sigkill_install(rig: Rig, name: str) -> dict[str, Any]:
    """A good snapshot announced (retained); the device is SIGKILLed ``KILL_DELAYS_S`` after its install got
    under way (unpacking, verifying, the child-process probe, the commit), restarted each time — the restart
    sees the retained announcement and installs again — until a kill comes after the install finished. Every
    start must come up on a consistent catalog (old or new), the last one on the new snapshot, and everything
    decided, the killed processes' outboxes included, must arrive."""
    folder = rig.work / f"{name}-snapshots"
    key, toml, pub = _key_and_toml(folder / "snap")
    from edge.fleet.publish import publish_snapshot

    good = _good_snapshot(rig, folder / "good", extra=True)
    announcement = publish_snapshot(good, to=str(pub), key=key)
    kills: list[dict[str, Any]] = []
    at_kill: dict[str, dict[str, Any]] = {}
    with rig.device(name, extra_toml=toml, size_mib=SNAPSHOT_DISK_MIB) as (dev, _disk, _gate, watcher):
        started(dev, watcher)
        _announce(rig.broker.port, announcement.to_payload())
        since = time.time()
        for delay in KILL_DELAYS_S:
            under_way = wait(functools.partial(_under_way, dev, since, announcement.snapshot), 60, step=0.002)
            time.sleep(delay)
            done = _installed(dev, announcement.snapshot)
            dev.kill()
            at_kill.update(_outbox_messages(dev))
            kills.append({"after_s": delay, "under_way": under_way, "install_done": done,
                          "products_at_kill": _products(dev)})
            since = time.time()
            started(dev, watcher)  # a consistent catalog: the runtime opens it and decides again
            if done:
                break
        ok = wait(lambda: _installed(dev, announcement.snapshot) and delivered_all(dev, watcher), 120, step=0.2)
        products = _products(dev)
        row = finish(name, FAULTS[name][1], dev, watcher, recovered=None, kills=kills, installed_at_end=ok,
                     products_after=products)
    _count_outbox_only(row, at_kill, dev, watcher)
    row["corrupted"] += int(products != 7) + sum(k["products_at_kill"] not in (6, 7) for k in kills)
    return row


def _changed(watcher: Watcher, before: tuple[int, int]) -> bool:
    return _counts(watcher) != before


def _under_way(dev: Device, since: float, snapshot: str) -> bool:
    return _installing(dev, since) or _installed(dev, snapshot)


def _installing(dev: Device, since: float) -> bool:
    """A snapshot folder was written since ``since`` (this process is unpacking or installing it)."""
    root = dev.data / "snapshots"
    try:
        return any(p.is_dir() and p.name != "incoming" and p.stat().st_mtime >= since for p in root.iterdir())
    except OSError:
        return False


def _installed(dev: Device, snapshot: str) -> bool:
    from edge.catalog.install import installed_state

    return (installed_state(dev.data)["current"] or {}).get("id") == snapshot


def _outbox_messages(dev: Device) -> dict[str, dict[str, Any]]:
    """What the killed process's outbox held (each row was written before its JSONL line)."""
    import sqlite3
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{dev.data / 'outbox.db'}?mode=ro", uri=True)) as db:
            return {str(r[0]): json.loads(r[1]) for r in db.execute("SELECT msg_id, payload FROM outbox")}
    except (sqlite3.Error, ValueError):
        return {}


def _count_outbox_only(row: dict[str, Any], at_kill: dict[str, dict[str, Any]], dev: Device,
                       watcher: Watcher) -> None:
    """Messages in the killed process's outbox but not in its JSONL (killed between the two writes) are decided
    too: count them in."""
    from benchmarks._chaos_rig import account

    extra = {k: v for k, v in at_kill.items() if k not in dev.decided() and "candidates" in v}
    if extra:
        row.update(account({**dev.decided(), **extra}, list(watcher.payloads)))


def _products(dev: Device) -> int:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(f"file:{dev.data / 'catalog.db'}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT COUNT(*) FROM products").fetchone()[0])
