"""The shelf inside the runtime: planogram decisions in, alerts out (MQTT via the outbox), history on disk.

:func:`attach_shelf` gives a :class:`~edge.pipeline.loop.Runtime` with ``mode = "shelf"`` cameras a
:class:`ShelfMonitor` (``rt.shelf``), with no change to the frame loop: it is one of the loop's decision
listeners (:meth:`~ShelfMonitor.on_match`: every published match message, with the region's crop; a
shelf facing's planogram state is the same :func:`~edge.pipeline.vote.planogram_state` the voter
uses) and rides on the operations hooks for :meth:`~ShelfMonitor.tick` (once a loop round) and
:meth:`~ShelfMonitor.close` (shutdown). The monitor:

- writes each facing's state change to the history (:mod:`edge.shelf.history`);
- keeps the crop of a facing's newest non-ok view, saved as the alert's snapshot when it alerts
  (``<catalog.data_dir>/shelf/crops/<id>.jpg``, bounded by ``shelf.crops_max``);
- feeds the :class:`~edge.shelf.alerts.AlertTracker` and publishes each alert event as one
  ``storelens.shelf-alert/1`` message on ``<prefix>/<camera>/alert`` through the outbox;
- acknowledges alerts for the staff page (:meth:`~ShelfMonitor.ack`: published and kept).

Thread-safe: decisions and ticks come from the frame loop, acks from the web server's threads.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.core.config import Settings
from edge.pipeline.vote import planogram_state
from edge.shelf.alerts import Alert, AlertEvent, AlertTracker, FacingTracker
from edge.shelf.history import ShelfHistory, StateRow, history_path

log = logging.getLogger("storelens.shelf")

ALERT_SCHEMA = "storelens.shelf-alert/1"
Publish = Callable[[str, dict[str, Any]], None]  # (topic suffix, message): the runtime's publish_result


def alert_message(e: AlertEvent, *, device: str) -> dict[str, Any]:
    """One alert event (``<prefix>/<camera>/alert``): ``event`` open | clear | ack, and the alert as it is now."""
    a = e.alert
    return {"schema": ALERT_SCHEMA, "id": uuid.uuid4().hex, "ts": round(e.ts, 3), "device": device,
            "event": e.kind, "alert_id": a.id, "camera": a.camera, "facing": a.facing, "state": a.state,
            "expected_sku": a.expected_sku, "observed_sku": a.observed_sku, "since": round(a.since, 3),
            "opened": round(a.opened, 3), "acked": a.acked, "cleared": a.cleared, "crop_id": a.crop_id}


class CropStore:
    """Alert snapshots as JPEG files, the oldest deleted past ``max_items``."""

    def __init__(self, folder: Path, *, max_items: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.max_items = folder, max_items

    def save(self, crop: np.ndarray) -> str | None:
        crop_id = uuid.uuid4().hex[:16]
        ok, jpg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            return None
        (self.folder / f"{crop_id}.jpg").write_bytes(jpg.tobytes())
        files = sorted(self.folder.glob("*.jpg"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.max_items)]:
            old.unlink(missing_ok=True)
        return crop_id

    def load(self, crop_id: str) -> bytes | None:
        if not crop_id.isalnum() or len(crop_id) > 32:
            return None
        path = self.folder / f"{crop_id}.jpg"
        return path.read_bytes() if path.is_file() else None


class ShelfMonitor:
    """See the module docstring; one per runtime."""

    def __init__(self, settings: Settings, *, publish: Publish, clock: Callable[[], float] = time.time) -> None:
        s = settings.shelf
        self.settings = settings
        self.tracker = AlertTracker(alert_after_s=s.alert_after_s, alert_states=s.alert_states)
        data = settings.catalog.data_dir
        self.history = ShelfHistory(history_path(data), max_rows=s.history_max_rows)
        self.crops = CropStore(data / "shelf" / "crops", max_items=s.crops_max)
        self.publish, self.clock = publish, clock
        self._lock = threading.Lock()
        self._crops: dict[tuple[str, str], np.ndarray] = {}  # newest non-ok crop of each facing
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # each published alert message (the page)
        self._planned = {(c.name, r.name): r.expected_sku for c in settings.cameras if c.mode == "shelf"
                         for r in c.rois if r.expected_sku is not None}
        for (cam, facing), sku in self._planned.items():
            self.tracker.facing(cam, facing, sku)

    def on_match(self, msg: dict[str, Any], crop: np.ndarray | None) -> None:
        """A published match message (the runtime's decision listener): a shelf facing's state, history on
        change, the tracker every time (heartbeats included). Other regions' messages are ignored."""
        key = (msg.get("camera", ""), msg.get("roi", ""))
        if key not in self._planned:
            return
        sku = msg["candidates"][0]["sku"] if msg.get("decision") == "known" and msg.get("candidates") else None
        expected = self._planned[key]
        state = planogram_state(sku, expected, self.settings.decision.empty_sku)
        ts = float(msg.get("ts", self.clock()))
        with self._lock:
            f = self.tracker.facing(key[0], key[1], expected)
            changed = f.observed != state
            if state != "ok" and crop is not None and (changed or key not in self._crops):
                self._crops[key] = crop.copy()
            f.observe(state, ts, observed_sku=sku)
        if changed:
            self.history.record_state(StateRow(ts, key[0], key[1], expected, state, sku))

    def tick(self) -> None:
        """Confirm states that held, publish the alert events that follow (cheap when nothing is due).
        A failure (a full disk, say) is logged and retried next round; it never stops the frame loop."""
        try:
            now = self.clock()
            with self._lock:
                due = [f for f in self.tracker.facings.values() if (t := f.next_due()) is not None and t <= now]
                events = [e for f in due for e in self._tick_facing(f, now)]
            for e in events:
                self._emit(e)
        except Exception:
            log.exception("shelf alerts could not be updated this round; retried on the next")

    def _tick_facing(self, f: FacingTracker, now: float) -> list[AlertEvent]:
        out = []
        for e in f.tick(now):
            if e.kind == "open" and (crop := self._crops.get((f.camera, f.facing))) is not None:
                crop_id = self.crops.save(crop)
                f.alert = replace(e.alert, crop_id=crop_id)
                e = AlertEvent(e.kind, f.alert, e.ts)
            out.append(e)
        return out

    def ack(self, alert_id: str) -> Alert | None:
        """Staff pressed "done": the alert acknowledged, published and kept; None when it is not open."""
        with self._lock:
            e = self.tracker.ack(alert_id, self.clock())
        if e is not None:
            self._emit(e)
        return e.alert if e is not None else None

    def open_alerts(self) -> list[Alert]:
        with self._lock:
            return [a for a in self.tracker.open_alerts() if a.acked is None]

    def states(self) -> dict[str, dict[str, str | None]]:
        """camera -> facing -> observed state (None before the first decision)."""
        with self._lock:
            out: dict[str, dict[str, str | None]] = {}
            for (cam, facing), f in self.tracker.facings.items():
                out.setdefault(cam, {})[facing] = f.observed
            return out

    def status(self) -> dict[str, Any]:
        """For the runtime's status message: facings watched, open alerts by state."""
        with self._lock:
            open_ = self.tracker.open_alerts()
        by: dict[str, int] = {}
        for a in open_:
            by[a.state] = by.get(a.state, 0) + 1
        return {"facings": len(self.tracker.facings), "open_alerts": by}

    def close(self) -> None:
        self.history.close()

    def _emit(self, e: AlertEvent) -> None:
        self.history.record_alert(e.alert)
        msg = alert_message(e, device=self.settings.device.id)
        self.publish(f"{e.alert.camera}/alert", msg)
        log.info("shelf alert", extra={"event": e.kind, "camera": e.alert.camera, "facing": e.alert.facing,
                                       "state": e.alert.state, "alert_id": e.alert.id})
        for listener in self.listeners:
            listener(msg)
