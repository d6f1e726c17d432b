"""Shelf alerts: a facing's planogram state becomes an alert only when it holds, and an alert clears once.

The runtime's shelf voter publishes a facing's planogram state (``ok``, ``empty``, ``misplaced``,
``unknown``) whenever it changes, a passing shopper's jacket included. A :class:`FacingTracker`
keeps the *observed* state (the newest one, with the time it began) and the *confirmed* state
(one that held for ``alert_after_s``). When the observed state has held that long it becomes
the confirmed state, and then:

- a confirmed alerting state (``shelf.alert_states``: ``empty`` and ``misplaced`` by default)
  opens an alert, unless the same alert is already open;
- ``ok`` clears the open alert (one ``clear`` event per alert, however the facing flickered);
- another alerting state replaces it (cleared, then a new alert: an empty facing refilled with
  the wrong product);
- a non-alerting state (``unknown``: the model cannot read the facing) leaves it open. Unknown
  is never empty: a facing nobody can read is not reported as sold out.

Staff acknowledge an alert ("done") with :meth:`AlertTracker.ack`; it stays tracked until the
facing is confirmed ``ok`` (its clear is still one event). Times are the caller's clock (the
runtime: wall time of the frames; the benchmark: simulated time), so the logic is exact to test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

AlertEventKind = Literal["open", "clear", "ack"]


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert about one facing (``since``: when its state began; ``opened``: when it became an alert)."""

    id: str
    camera: str
    facing: str
    state: str
    expected_sku: str | None
    observed_sku: str | None
    since: float
    opened: float
    crop_id: str | None = None
    acked: float | None = None
    cleared: float | None = None


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """What happened to an alert at ``ts``: opened, cleared (facing back to ok or another alert), acknowledged."""

    kind: AlertEventKind
    alert: Alert
    ts: float


@dataclass(slots=True)
class _Observed:
    state: str
    since: float
    observed_sku: str | None
    crop_id: str | None


class FacingTracker:
    """The hold-and-clear state machine of one facing (see the module docstring)."""

    def __init__(self, *, camera: str, facing: str, expected_sku: str | None, alert_after_s: float,
                 alert_states: Iterable[str] = ("empty", "misplaced")) -> None:
        self.camera, self.facing, self.expected_sku = camera, facing, expected_sku
        self.alert_after_s = alert_after_s
        self.alert_states = frozenset(alert_states)
        self.confirmed: str | None = None
        self.alert: Alert | None = None
        self._seen: _Observed | None = None

    @property
    def observed(self) -> str | None:
        return self._seen.state if self._seen else None

    def observe(self, state: str, ts: float, *, observed_sku: str | None = None,
                crop_id: str | None = None) -> None:
        """The voter's state at ``ts``; a new state restarts the hold, the same one keeps its start."""
        if self._seen is None or self._seen.state != state:
            self._seen = _Observed(state, ts, observed_sku, crop_id)
        else:
            self._seen.observed_sku = observed_sku or self._seen.observed_sku
            self._seen.crop_id = self._seen.crop_id or crop_id

    def next_due(self) -> float | None:
        """When the observed state will have held long enough to be confirmed (None: nothing pending)."""
        if self._seen is None or self._seen.state == self.confirmed:
            return None
        return self._seen.since + self.alert_after_s

    def tick(self, now: float) -> list[AlertEvent]:
        """Confirm the observed state if it held ``alert_after_s``; the alert events that follow."""
        due = self.next_due()
        if due is None or now < due or self._seen is None:
            return []
        seen, self.confirmed = self._seen, self._seen.state
        events: list[AlertEvent] = []
        open_ = self.alert
        if open_ is not None and (seen.state == "ok" or (seen.state in self.alert_states and
                                                         seen.state != open_.state)):
            events.append(AlertEvent("clear", replace(open_, cleared=now), now))
            self.alert = open_ = None
        if open_ is None and seen.state in self.alert_states:
            self.alert = Alert(id=uuid.uuid4().hex[:16], camera=self.camera, facing=self.facing, state=seen.state,
                               expected_sku=self.expected_sku, observed_sku=seen.observed_sku, since=seen.since,
                               opened=now, crop_id=seen.crop_id)
            events.append(AlertEvent("open", self.alert, now))
        return events

    def ack(self, now: float) -> AlertEvent | None:
        """Staff said "done": the open alert is acknowledged (once); None when there is none or it already was."""
        if self.alert is None or self.alert.acked is not None:
            return None
        self.alert = replace(self.alert, acked=now)
        return AlertEvent("ack", self.alert, now)


class AlertTracker:
    """Every facing's tracker, keyed by ``(camera, facing)``; created on first sight of the facing."""

    def __init__(self, *, alert_after_s: float, alert_states: Iterable[str] = ("empty", "misplaced")) -> None:
        self.alert_after_s = alert_after_s
        self.alert_states = tuple(alert_states)
        self.facings: dict[tuple[str, str], FacingTracker] = {}

    def facing(self, camera: str, facing: str, expected_sku: str | None = None) -> FacingTracker:
        key = (camera, facing)
        if key not in self.facings:
            self.facings[key] = FacingTracker(camera=camera, facing=facing, expected_sku=expected_sku,
                                              alert_after_s=self.alert_after_s, alert_states=self.alert_states)
        return self.facings[key]

    def tick(self, now: float) -> list[AlertEvent]:
        return [e for f in self.facings.values() for e in f.tick(now)]

    def open_alerts(self) -> list[Alert]:
        """Open alerts, oldest first (what the staff page lists)."""
        return sorted((f.alert for f in self.facings.values() if f.alert is not None), key=lambda a: a.since)

    def ack(self, alert_id: str, now: float) -> AlertEvent | None:
        """Acknowledge the open alert with this id; None when no open alert has it (cleared, or never was)."""
        for f in self.facings.values():
            if f.alert is not None and f.alert.id == alert_id:
                return f.ack(now)
        return None
