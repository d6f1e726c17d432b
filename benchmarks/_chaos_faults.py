"""The chaos drill's faults while the device runs: a full disk, a stepped clock, a restarted broker.

Each registers itself in :data:`benchmarks._chaos_rig.FAULTS` (see :mod:`benchmarks.chaos`).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks._chaos_rig import (
    FAULTS,
    SETTLE_S,
    Rig,
    delivered_all,
    fault,
    finish,
    more_decisions,
    settle,
    started,
    wait,
)

YEAR_S = 365 * 86400.0
ROOMY_MIB = 16  # the clock and broker faults are not about space: a disk they cannot fill


@fault("disk-full-outage", "disk full during a broker outage")
def disk_full_during_outage(rig: Rig, name: str) -> dict[str, Any]:
    """Broker unreachable, then the disk fills: decisions are held in memory; the broker returns while the
    disk is still full (delivered from memory, acks refused by the disk), then space returns."""
    with rig.device(name) as (dev, disk, gate, watcher):
        started(dev, watcher)
        gate.close()
        disk.fill()
        more_decisions(dev, 6)
        gate.open()
        wait(lambda: delivered_all(dev, watcher), SETTLE_S)
        disk.free()
        return finish(name, FAULTS[name][1], dev, watcher, recovered=settle(dev, watcher))


@fault("disk-full-after-outage", "disk full after a broker outage")
def disk_full_after_outage(rig: Rig, name: str) -> dict[str, Any]:
    """Messages queue on disk during an outage; the broker returns as the disk fills (finding 11: the
    PUBACKs' deletes fail), decisions go on; then space returns."""
    with rig.device(name) as (dev, disk, gate, watcher):
        started(dev, watcher)
        gate.close()
        more_decisions(dev, 8)
        disk.fill()
        gate.open()
        more_decisions(dev, 4)
        wait(lambda: delivered_all(dev, watcher), SETTLE_S)
        disk.free()
        return finish(name, FAULTS[name][1], dev, watcher, recovered=settle(dev, watcher))


def _clock_step(rig: Rig, name: str, steps: list[float]) -> dict[str, Any]:
    """Messages queued during an outage, the wall clock stepped through ``steps``, outbox pruning running
    every second (:mod:`benchmarks._chaos_launch`), then the broker back."""
    with rig.device(name, size_mib=ROOMY_MIB) as (dev, _disk, gate, watcher):
        started(dev, watcher)
        gate.close()
        for offset in steps:
            dev.step_clock(offset)
            more_decisions(dev, 8)
        time.sleep(3)  # three prune rounds at the final clock
        gate.open()
        return finish(name, FAULTS[name][1], dev, watcher, recovered=settle(dev, watcher))


@fault("clock-forward", "clock stepped forward a year")
def clock_forward(rig: Rig, name: str) -> dict[str, Any]:
    return _clock_step(rig, name, [0.0, YEAR_S])


@fault("clock-back", "clock stepped back a year (then corrected)")
def clock_back(rig: Rig, name: str) -> dict[str, Any]:
    """Finding 14's case: messages stamped a year back, then NTP corrects the clock."""
    return _clock_step(rig, name, [-YEAR_S, 0.0])


def _broker_restart(rig: Rig, name: str, *, persistent: bool) -> dict[str, Any]:
    with rig.device(name, size_mib=ROOMY_MIB) as (dev, _disk, gate, watcher):
        started(dev, watcher)
        if not persistent:  # hold the device back until the watcher (its session gone) subscribed again
            gate.close()
        rig.broker.stop()
        if not persistent:
            (rig.broker.workdir / "mosquitto.db").unlink(missing_ok=True)
        more_decisions(dev, 5)
        rig.broker.start()
        wait(watcher.subscribed.is_set, 30)
        gate.open()
        return finish(name, FAULTS[name][1], dev, watcher, recovered=settle(dev, watcher))


@fault("broker-restart", "broker restarted (persistence on)")
def broker_restart(rig: Rig, name: str) -> dict[str, Any]:
    return _broker_restart(rig, name, persistent=True)


@fault("broker-restart-fresh", "broker restarted without persistence")
def broker_restart_fresh(rig: Rig, name: str) -> dict[str, Any]:
    return _broker_restart(rig, name, persistent=False)


