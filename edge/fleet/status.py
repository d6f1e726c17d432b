"""``storelens fleet status``: every device and its catalog and bundle, from the broker's retained messages.

Devices keep a retained ``storelens/<store>/<device>/status`` (bundle, catalog version, the
installed snapshot and its refusals under ``catalog_update``) and ``.../available``
(online/offline, the Last Will); stores keep a retained ``storelens/<store>/catalog/available``.
Subscribing to those filters returns them at once, so a short wait sees the whole fleet.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho

from edge.core.config import MqttSettings
from edge.fleet.publish import connect, mqtt_client

PREFIX = "storelens"


@dataclass
class FleetView:
    """What the retained topics said: devices by (store, id), and each store's announced snapshot."""

    devices: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    announced: dict[str, dict[str, Any]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for (store, dev), d in sorted(self.devices.items()):
            st = d.get("status") or {}
            upd = st.get("catalog_update") or {}
            ann = self.announced.get(store) or {}
            out.append({"store": store, "device": dev, "online": d.get("available") == "online",
                        "bundle": st.get("bundle"), "catalog_version": st.get("catalog_version"),
                        "snapshot": upd.get("snapshot"), "refused": upd.get("refused", 0),
                        "last_error": upd.get("last_error"), "announced": ann.get("snapshot"),
                        "current": bool(ann) and upd.get("snapshot") == ann.get("snapshot")})
        return out


def collect(settings: MqttSettings, *, store: str = "+", wait_s: float = 2.0) -> FleetView:
    """Subscribe to the status, availability and announcement topics and gather what arrives in ``wait_s``."""
    view = FleetView()
    lock = threading.Lock()

    def on_message(_c: paho.Client, _ud: Any, msg: paho.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 4:
            return
        _, s, middle, leaf = parts
        text = bytes(msg.payload).decode("utf-8", "replace")
        with lock:
            if middle == "catalog" and leaf == "available":
                view.announced[s] = _json(text)
            elif leaf == "status":
                view.devices.setdefault((s, middle), {})["status"] = _json(text)
            elif leaf == "available":
                view.devices.setdefault((s, middle), {})["available"] = text

    client = mqtt_client(settings, client_id=f"storelens-fleet-{time.time_ns():x}")
    client.on_message = on_message
    connect(client, settings)
    try:
        for leaf in ("status", "available"):
            client.subscribe(f"{PREFIX}/{store}/+/{leaf}", qos=1)
        time.sleep(wait_s)
    finally:
        client.disconnect()
        client.loop_stop()
    view.devices = {k: v for k, v in view.devices.items() if "status" in v or k[1] != "catalog"}
    return view


def _json(text: str) -> dict[str, Any]:
    try:
        d = json.loads(text)
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}
