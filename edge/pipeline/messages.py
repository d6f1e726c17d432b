"""What the runtime says: the match, planogram, status and stats messages, and the printed decision line.

Schemas are versioned strings in every message (``storelens.match/1`` ...); a field is only ever
added to a schema version, never renamed or removed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edge import __version__
from edge.comms.outbox import OutboxStats
from edge.core.config import DeviceSettings
from edge.pipeline.capture import CameraThread
from edge.pipeline.gate import GateStats
from edge.pipeline.vote import Decision, VoteParams
from edge.text.ocr.worker import OcrStats

MATCH_SCHEMA = "storelens.match/1"
PLANOGRAM_SCHEMA = "storelens.planogram/1"
STATUS_SCHEMA = "storelens.status/1"
STATS_SCHEMA = "storelens.stats/1"
PLANOGRAM_CANDIDATES = 3  # a planogram event lists the top few, a match message top_k


def match_message(d: Decision, *, device: str, bundle: str, catalog_version: int | str) -> dict[str, Any]:
    """A region's decision (``<prefix>/<camera>/match``); ``latency_ms`` is capture to now."""
    return {"schema": MATCH_SCHEMA, "id": uuid.uuid4().hex, "ts": round(d.ts, 6), "device": device,
            "camera": d.camera, "roi": d.roi, "decision": d.decision,
            "candidates": [c.to_dict() for c in d.candidates], "frames": d.frames, "agreement": d.agreement,
            "heartbeat": d.heartbeat, "latency_ms": round((time.time() - d.ts) * 1000, 2), "bundle": bundle,
            "catalog_version": catalog_version}


def planogram_message(d: Decision, *, match_id: str, device: str, catalog_version: int | str) -> dict[str, Any]:
    """A shelf slot's state (``<prefix>/<camera>/planogram``), pointing at the match message it came with."""
    return {"schema": PLANOGRAM_SCHEMA, "id": uuid.uuid4().hex, "match_id": match_id, "ts": round(d.ts, 6),
            "device": device, "camera": d.camera, "roi": d.roi, "event": d.planogram,
            "expected_sku": d.expected_sku, "observed_sku": d.sku, "heartbeat": d.heartbeat,
            "candidates": [c.to_dict() for c in d.candidates[:PLANOGRAM_CANDIDATES]],
            "catalog_version": catalog_version}


def status_message(*, device: DeviceSettings, bundle: str, catalog_version: int | str,
                   cameras: Sequence[CameraThread], thresholds: VoteParams | None = None,
                   repairs: Any = None) -> dict[str, Any]:
    """The retained ``<prefix>/status``: who this device is, what it runs, each camera's state; the decision
    thresholds in use (and whether they are calibrated); indexes rebuilt because they disagreed with the catalog."""
    out: dict[str, Any] = {
        "schema": STATUS_SCHEMA, "version": __version__, "device": device.id, "store": device.store,
        "bundle": bundle, "catalog_version": catalog_version,
        "cameras": {c.name: {"state": c.stats.state, "outages": c.stats.outages, "mode": c.settings.mode,
                             "rois": [r.name for r in c.settings.rois]} for c in cameras}}
    if thresholds is not None:
        out["thresholds"] = {"threshold": thresholds.threshold, "margin": thresholds.margin,
                             "source": thresholds.source, "calibrated": thresholds.calibrated,
                             "note": thresholds_note(thresholds)}
    if repairs is not None:
        out["catalog"] = repairs.to_dict()
    return out


def thresholds_note(p: VoteParams) -> str | None:
    """What to tell the operator when the fallback thresholds decide (None when they do not)."""
    if p.calibrated:
        return None
    why = ("the stored calibration was made with another image encoder" if p.source == "stale-calibration"
           else "no calibration is stored with the catalog and the config sets none")
    return (f"decision thresholds are not calibrated ({why}): the fallback threshold {p.threshold} and margin "
            f"{p.margin} (decision.uncalibrated_*) decide, so products may come out unknown or wrongly known; "
            "run `storelens calibrate LABELLED --config FILE` with labelled photos of enrolled products "
            "(or set decision.threshold and decision.margin)")


def stats_message(*, counts: Mapping[str, int], uptime_s: float, latencies_ms: Iterable[float],
                  gates: Iterable[GateStats], outbox: OutboxStats, mqtt: dict[str, Any],
                  cameras: Sequence[CameraThread], commands: dict[str, int], ocr: dict[str, Any]) -> dict[str, Any]:
    """The periodic ``<prefix>/stats`` (and the summary ``storelens run`` prints at the end)."""
    gate = GateStats()
    for g in gates:
        gate.add(g)
    lat = sorted(latencies_ms)
    up = max(1e-9, uptime_s)
    return {
        "schema": STATS_SCHEMA, "ts": round(time.time(), 3), "uptime_s": round(up, 1), **counts,
        "fps": round(counts["frames"] / up, 2),
        "latency_ms": {"p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99)},
        "unknown_rate": round(counts["unknown"] / counts["decisions"], 4) if counts["decisions"] else 0.0,
        "gate": gate.to_dict(), "outbox": outbox.to_dict(), "mqtt": mqtt,
        "cameras": {c.name: c.stats.to_dict() for c in cameras}, "commands": commands, "ocr": ocr,
    }


def ocr_stats(reranker: Any) -> dict[str, Any]:
    """``stats.ocr``: the same keys whether label text is on or off (off: ``enabled`` false, counters 0),
    so a dashboard reading ``ocr.reads`` never meets a missing key."""
    if reranker is None:
        return {"enabled": False, **OcrStats(0, 0, 0, 0, 0, 0, 0.0, 0.0).to_dict(), "fused": 0}
    return {"enabled": True, **reranker.worker.stats().to_dict(), "fused": int(reranker.fused)}


def decision_line(d: Decision) -> str:
    """One printed line per published decision: time, region, decision, top product, frames."""
    top = f"{d.candidates[0].sku} ({d.candidates[0].score:.2f})" if d.decision == "known" else "-"
    extra = f" planogram={d.planogram}" if d.planogram else ""
    hb = " heartbeat" if d.heartbeat else ""
    stamp = time.strftime("%H:%M:%S", time.localtime(d.ts))
    return f"{stamp} {d.camera}/{d.roi} {d.decision:7s} {top} frames={d.frames}{extra}{hb}"


class DecisionLines:
    """The printed decision lines of a kiosk, numbered by item (issue 29 item 22).

    Each line of a kiosk camera ends with the item it is about (``item 3``): the runtime's
    ``item_id`` when the match carries one, else its view (no item: the plain line). A later
    answer for the same item says ``item 3 updated``, so it never reads as a second item;
    heartbeats and the final answer keep ``item 3``; shelf cameras keep the plain line.
    """

    REMEMBERED = 256  # items whose numbers are kept (a late update of an older one gets a new number)

    def __init__(self, kiosk_cameras: Iterable[str]) -> None:
        self.kiosk_cameras = frozenset(kiosk_cameras)
        self._numbers: dict[str, int] = {}
        self._count = 0

    def line(self, d: Decision, *, item: str | None) -> str:
        base = decision_line(d)
        if d.camera not in self.kiosk_cameras or not item:
            return base
        number = self._numbers.get(item)
        if number is None:
            self._count += 1
            number = self._numbers[item] = self._count
            if len(self._numbers) > self.REMEMBERED:
                del self._numbers[next(iter(self._numbers))]
            return f"{base}  item {number}"
        firm = d.heartbeat or bool(getattr(d, "final", False))  # the line already says heartbeat / final
        return f"{base}  item {number}" + ("" if firm else " updated")


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of already sorted values (nearest rank), rounded to 0.01; None when empty."""
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 2)
