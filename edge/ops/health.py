"""Health: the runtime writes a small status file from its frame loop; ``storelens health`` judges it.

Why a file and not the retained MQTT ``status`` topic (docs/decisions.md has the long form):
the health check must work exactly when the broker is the thing that is down; a stalled frame
loop is only visible to something the loop itself writes (paho's network thread keeps the MQTT
session alive while the loop hangs); and a local file needs no credentials or network. The
loop thread rewrites the file at most every ``health.heartbeat_s`` (atomically: temporary file
plus ``os.replace``, so a reader never sees half a file); its age is the loop's heartbeat.

:func:`evaluate` turns a status and thresholds into :class:`Problem` s, each naming the part
that failed: ``runtime`` (no status, process gone), ``loop`` (stalled), ``camera``, ``mqtt``,
``outbox``, ``disk`` (the outbox holds messages in memory because the disk refuses writes).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.core.ops_settings import HealthSettings

if TYPE_CHECKING:  # `storelens health` imports this module: keep it free of OpenCV and paho
    from edge.comms.mqtt import MqttLink
    from edge.comms.outbox import Outbox
    from edge.pipeline.capture import CameraThread

log = logging.getLogger("storelens.health")

HEALTH_SCHEMA = "storelens.health/1"
IN_PLACE_BLOCK = 4096  # the status file is padded to whole blocks, so a full disk can still overwrite it
STATUS_FILE = "health.json"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a part counts as unhealthy (the ``[health]`` config section)."""

    loop_stall_s: float = 30.0
    broker_down_s: float = 60.0
    camera_down_s: float = 30.0
    outbox_ratio: float = 0.8

    @classmethod
    def from_settings(cls, h: HealthSettings) -> Thresholds:
        return cls(loop_stall_s=h.loop_stall_s, broker_down_s=h.broker_down_s, camera_down_s=h.camera_down_s,
                   outbox_ratio=h.outbox_ratio)


@dataclass(frozen=True, slots=True)
class Problem:
    check: str  # runtime | loop | camera | mqtt | outbox | disk
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON in one step (readers see the old or the new file, never half).

    On a full disk (ENOSPC) the temporary file cannot be written; the existing file is then
    overwritten in place instead (its blocks are already allocated, so that needs no space), padded
    with spaces to a whole block — still valid JSON — so the heartbeat and the disk problem stay
    visible to ``storelens health``. A reader may then, rarely, catch a half-written file (it
    reads as no status and the next check sees the whole one).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(data, separators=(",", ":")).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(body.ljust(-(-len(body) // IN_PLACE_BLOCK) * IN_PLACE_BLOCK))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno != errno.ENOSPC or not path.exists() or len(body) > path.stat().st_size:
            raise
        with path.open("r+b") as f:  # the full-disk fallback: reuse the file's own blocks
            f.write(body.ljust(path.stat().st_size))


def _wall(monotonic_ts: float | None, now_mono: float, now_wall: float) -> float | None:
    return None if monotonic_ts is None else round(now_wall - (now_mono - monotonic_ts), 3)


class HeartbeatWriter:
    """Writes the status file from the frame loop (``tick``), at most every ``interval_s``."""

    def __init__(self, path: Path, *, interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.started = time.time()
        self.mqtt_down_since: float | None = None  # wall time the link was first seen disconnected
        self._next = 0.0
        self.writes = 0
        self.write_errors = 0  # status file writes that failed (a full disk); counted, logged, never raised

    def tick(self, *, cameras: Sequence[CameraThread], link: MqttLink | None, outbox: Outbox,
             force: bool = False) -> bool:
        """Write the file if it is due (or ``force``); True when it was written."""
        now_mono = time.monotonic()
        if not force and now_mono < self._next:
            return False
        self._next = now_mono + self.interval_s
        try:
            write_atomic(self.path, self.snapshot(cameras=cameras, link=link, outbox=outbox))
        except OSError as e:  # a full or read-only disk must not stop the frame loop that calls this
            self.write_errors += 1
            if self.write_errors == 1 or self.write_errors % 600 == 0:
                log.error("cannot write the health status file %s: %s (free space in catalog.data_dir)", self.path, e,
                          extra={"errors": self.write_errors})
            return False
        self.writes += 1
        return True

    def snapshot(self, *, cameras: Sequence[CameraThread], link: MqttLink | None, outbox: Outbox) -> dict[str, Any]:
        now_mono, now = time.monotonic(), time.time()
        if link is not None and not link.connected:
            self.mqtt_down_since = self.mqtt_down_since or now
        else:
            self.mqtt_down_since = None
        ob = outbox.stats()
        return {
            "schema": HEALTH_SCHEMA, "pid": os.getpid(), "ts": round(now, 3), "started": round(self.started, 3),
            "cameras": {c.name: {"state": c.stats.state, "down_since": _wall(c.stats.down_since, now_mono, now),
                                 "last_error": c.stats.last_error} for c in cameras},
            "mqtt": {"enabled": link is not None, "connected": bool(link and link.connected),
                     "down_since": self.mqtt_down_since,
                     "last_error": link.stats.last_error if link else None},
            "outbox": {"depth": ob.depth, "max": outbox.max_messages, "dropped_full": ob.dropped_full,
                       "in_memory": ob.in_memory, "write_errors": ob.write_errors, "last_error": ob.last_error,
                       "failing": ob.failing},
        }


def read_status(path: Path) -> dict[str, Any] | None:
    """The status file, or None when it does not exist or cannot be read as JSON."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def evaluate(status: dict[str, Any] | None, th: Thresholds, *, now: float | None = None,
             path: Path | None = None) -> list[Problem]:
    """Every problem the status shows; empty when the device is healthy."""
    if status is None:
        return [Problem("runtime", f"no status file{f' at {path}' if path else ''}: the runtime is not running "
                                   "(or runs with another catalog.data_dir)")]
    now = time.time() if now is None else now
    pid = int(status.get("pid", 0))
    if pid and not pid_alive(pid):
        return [Problem("runtime", f"not running (pid {pid} is gone; last heartbeat {now - status['ts']:.0f} s ago)")]
    problems: list[Problem] = []
    age = now - float(status["ts"])
    if age > th.loop_stall_s:
        problems.append(Problem("loop", f"frame loop stalled: no heartbeat for {age:.1f} s "
                                        f"(threshold {th.loop_stall_s:g} s)"))
    for name, cam in sorted(status.get("cameras", {}).items()):
        since = cam.get("down_since")
        if cam.get("state") == "down" and since is not None and now - since > th.camera_down_s:
            problems.append(Problem("camera", f"camera {name!r} down for {now - since:.0f} s "
                                              f"(threshold {th.camera_down_s:g} s): {cam.get('last_error')}"))
    mqtt = status.get("mqtt", {})
    since = mqtt.get("down_since")
    if mqtt.get("enabled") and since is not None and now - since > th.broker_down_s:
        problems.append(Problem("mqtt", f"MQTT broker unreachable for {now - since:.0f} s "
                                        f"(threshold {th.broker_down_s:g} s): {mqtt.get('last_error')}"))
    ob = status.get("outbox", {})
    if ob.get("max") and ob.get("depth", 0) >= th.outbox_ratio * ob["max"]:
        problems.append(Problem("outbox", f"outbox near its bound: {ob['depth']} of {ob['max']} messages "
                                          f"(threshold {th.outbox_ratio:.0%}); oldest are dropped when full"))
    if ob.get("in_memory") or ob.get("failing"):
        problems.append(Problem("disk", f"the outbox cannot write to disk ({ob.get('last_error')}): "
                                        f"{ob.get('in_memory', 0)} messages held in memory, saved when there is "
                                        "room; free space in catalog.data_dir"))
    return problems


def report(problems: Sequence[Problem], status: dict[str, Any] | None, th: Thresholds) -> dict[str, Any]:
    """The ``--json`` form of a health check."""
    return {"healthy": not problems, "problems": [asdict(p) for p in problems], "thresholds": asdict(th),
            "status": status}
