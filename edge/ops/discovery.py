"""Home Assistant MQTT discovery (opt-in, ``[homeassistant]`` config section).

Follows Home Assistant's documented single-component discovery schema: one retained config
message per entity on ``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` (ids from
``[a-zA-Z0-9_-]``), each with ``unique_id``, ``state_topic``, the shared ``device`` (so the
entities group under one device), ``origin``, and ``availability`` bound to the runtime's
``<prefix>/available`` topic, whose Last Will is ``offline``.

Entities:

* per camera region: ``sensor`` *product* (the decided product's name) and ``sensor``
  *decision* (known / unknown; ok / misplaced / empty / unknown on a shelf slot), both read from
  the region's retained state topic ``<prefix>/<camera>/<roi>/state`` (JSON, also the attributes);
* per camera: ``binary_sensor`` *connected* (diagnostic, from the retained ``status`` topic);
* device: diagnostic sensors from the periodic ``stats`` message (fps, decisions, unknown rate,
  latency, outbox depth, gate skip ratio, uptime).

Configs (and the last region states) are published whenever the link (re)connects and when
Home Assistant announces itself (``<discovery_prefix>/status`` = ``online``). The runtime also
subscribes to its own node's config topics: a retained config it no longer publishes (a camera
or region removed from the config) is cleared with an empty retained payload, which removes
the entity, and so is that entity's old retained state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edge import __version__
from edge.comms.mqtt import MqttLink
from edge.core.config import CameraSettings
from edge.pipeline.vote import Decision

log = logging.getLogger("storelens.discovery")

STATE_MAX = 255  # Home Assistant truncates (and warns about) longer states
REMOVED_KEEP = 64  # cleared config topics remembered (a flood of forged configs must not grow memory)
STATE_SCHEMA = "storelens.region_state/1"  # the retained <prefix>/<camera>/<roi>/state message


def slug(name: str) -> str:
    """``name`` as a discovery id (``[a-zA-Z0-9_-]``); a name that had to change gets a short hash (no clashes)."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    return clean if clean == name else f"{clean}_{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def region_state_topic(prefix: str, camera: str, roi: str) -> str:
    return f"{prefix}/{camera}/{slug(roi)}/state"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Who the entities belong to, and where the runtime publishes."""

    store: str
    device_id: str
    prefix: str  # the runtime's topic prefix
    discovery_prefix: str = "homeassistant"
    name: str | None = None

    @property
    def node_id(self) -> str:
        return slug(f"storelens_{self.store}_{self.device_id}")

    @property
    def available_topic(self) -> str:
        return f"{self.prefix}/available"

    def device(self) -> dict[str, Any]:
        return {"identifiers": [self.node_id], "name": self.name or f"StoreLens {self.store} {self.device_id}",
                "manufacturer": "StoreLens", "model": "StoreLens edge runtime", "sw_version": __version__}

    def topic(self, component: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_id}/config"


# (object id, template path into the stats message, name, unit, device_class)
STATS_SENSORS: tuple[tuple[str, str, str, str | None, str | None], ...] = (
    ("fps", "value_json.fps", "Frames per second", "fps", None),
    ("decisions", "value_json.decisions", "Decisions", None, None),
    ("unknown_rate", "value_json.unknown_rate", "Unknown rate", None, None),
    ("latency_p50", "value_json.latency_ms.p50", "Decision latency p50", "ms", "duration"),
    ("outbox_depth", "value_json.outbox.depth", "Outbox depth", None, None),
    ("gate_skip_ratio", "value_json.gate.skip_ratio", "Gate skip ratio", None, None),
    ("uptime", "value_json.uptime_s", "Uptime", "s", "duration"),
)


def _entity(info: DeviceInfo, object_id: str, name: str, state_topic: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "unique_id": f"{info.node_id}_{object_id}", "state_topic": state_topic,
            "availability": [{"topic": info.available_topic, "payload_available": "online",
                              "payload_not_available": "offline"}],
            "device": info.device(), "origin": {"name": "StoreLens", "sw_version": __version__}, "qos": 1, **extra}


def region_configs(info: DeviceInfo, cam: CameraSettings) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    shelf = cam.mode == "shelf"
    for roi in cam.rois:
        base = f"{slug(cam.name)}_{slug(roi.name)}"
        state = region_state_topic(info.prefix, cam.name, roi.name)
        options = ["ok", "misplaced", "empty", "unknown"] if shelf and roi.expected_sku else ["known", "unknown"]
        out[info.topic("sensor", f"{base}_product")] = _entity(
            info, f"{base}_product", f"{cam.name} {roi.name} product", state,
            value_template="{{ value_json.product }}", json_attributes_topic=state, icon="mdi:package-variant-closed")
        out[info.topic("sensor", f"{base}_decision")] = _entity(
            info, f"{base}_decision", f"{cam.name} {roi.name} decision", state,
            value_template="{{ value_json.decision }}", device_class="enum", options=options,
            icon="mdi:check-decagram")
    return out


def device_configs(info: DeviceInfo, cameras: Sequence[CameraSettings]) -> dict[str, dict[str, Any]]:
    """Every discovery config of the device: topic -> payload."""
    out: dict[str, dict[str, Any]] = {}
    for cam in cameras:
        out.update(region_configs(info, cam))
        oid = f"{slug(cam.name)}_connected"
        out[info.topic("binary_sensor", oid)] = _entity(
            info, oid, f"{cam.name} camera", f"{info.prefix}/status", device_class="connectivity",
            entity_category="diagnostic",
            value_template="{{ 'ON' if value_json.cameras.get('" + cam.name
            + "', {}).get('state') == 'ok' else 'OFF' }}")
    for oid, path, name, unit, dev_class in STATS_SENSORS:
        extra: dict[str, Any] = {"value_template": "{{ " + path + " }}", "entity_category": "diagnostic",
                                 "state_class": "measurement"}
        if unit:
            extra["unit_of_measurement"] = unit
        if dev_class:
            extra["device_class"] = dev_class
        out[info.topic("sensor", oid)] = _entity(info, oid, name, f"{info.prefix}/stats", **extra)
    return out


def region_state(d: Decision) -> dict[str, Any]:
    """The retained state of a region after decision ``d`` (the product and decision sensors read it)."""
    top = d.candidates[0] if d.candidates else None
    known = d.decision == "known" and top is not None
    return {"schema": STATE_SCHEMA, "decision": d.planogram or d.decision,
            "product": (top.name or top.sku)[:STATE_MAX] if known and top else "unknown",
            "sku": top.sku if known and top else None,
            "score": round(top.score, 4) if top else None, "expected_sku": d.expected_sku,
            "camera": d.camera, "roi": d.roi, "ts": round(d.ts, 3)}


class HomeAssistantDiscovery:
    """Publishes the configs and region states over the runtime's link; clears configs it no longer has."""

    def __init__(self, *, link: MqttLink, info: DeviceInfo, cameras: Sequence[CameraSettings]) -> None:
        self.link = link
        self.info = info
        self.configs = {t: json.dumps(p, separators=(",", ":")).encode()
                        for t, p in device_configs(info, cameras).items()}
        self.state_topics = {region_state_topic(info.prefix, c.name, r.name) for c in cameras for r in c.rois}
        self.removed: deque[str] = deque(maxlen=REMOVED_KEEP)  # the latest config topics cleared (tests, logs)
        self.removed_total = 0
        self._states: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._connected = False
        self._republish = threading.Event()

    def attach(self) -> None:
        """Subscribe to this node's retained configs (to clear stale ones) and Home Assistant's birth message."""
        dp = self.info.discovery_prefix
        self.link.add_topic_handler(f"{dp}/+/{self.info.node_id}/+/config", self._on_config)
        self.link.add_topic_handler(f"{dp}/status", self._on_ha_status)

    def tick(self) -> None:
        """From the loop: publish everything after a (re)connect or a Home Assistant restart."""
        connected = self.link.connected
        if connected and (not self._connected or self._republish.is_set()):
            self._republish.clear()
            self.publish_all()
        self._connected = connected

    def publish_all(self) -> None:
        for topic, payload in self.configs.items():
            self.link.publish_now(topic, payload, qos=1, retain=True)
        with self._lock:
            states = list(self._states.items())
        for topic, payload in states:
            self.link.publish_now(topic, payload, qos=1, retain=True)
        log.info("home assistant discovery published", extra={"entities": len(self.configs)})

    def decision(self, d: Decision) -> None:
        """A changed decision: the region's retained state (heartbeats change nothing here)."""
        if d.heartbeat:
            return
        topic = region_state_topic(self.info.prefix, d.camera, d.roi)
        payload = json.dumps(region_state(d), separators=(",", ":")).encode()
        with self._lock:
            self._states[topic] = payload
        self.link.publish_now(topic, payload, qos=1, retain=True)

    # -- on paho's network thread: quick, no loop state touched -----------------------------------

    def _on_config(self, topic: str, payload: bytes, _props: Any) -> None:
        if not payload or topic in self.configs:
            return
        self.link.publish_now(topic, b"", qos=1, retain=True)
        self.removed.append(topic)
        self.removed_total += 1
        for old in self._old_state_topics(payload):
            self.link.publish_now(old, b"", qos=1, retain=True)
        log.info("home assistant entity removed (no longer configured)", extra={"topic": topic})

    def _old_state_topics(self, payload: bytes) -> Iterable[str]:
        try:
            old = json.loads(payload)
        except ValueError:
            return []
        state = old.get("state_topic") or old.get("stat_t") if isinstance(old, dict) else None
        mine = isinstance(state, str) and state.startswith(f"{self.info.prefix}/") and state.endswith("/state")
        return [state] if mine and state not in self.state_topics else []  # type: ignore[list-item]

    def _on_ha_status(self, _topic: str, payload: bytes, _props: Any) -> None:
        if payload.strip().lower() == b"online":
            self._republish.set()
