"""Every queue a flood can reach is bounded (issue 28, finding 14): the learning thread's queue of
kiosk confirmations and point-of-sale scans, and Home Assistant's list of cleared config topics."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from edge.comms.mqtt import MqttLink
from edge.comms.outbox import Outbox
from edge.core.config import CameraSettings, MqttSettings, RoiSettings
from edge.core.learning_settings import LearningSettings
from edge.ops.discovery import DeviceInfo, HomeAssistantDiscovery
from edge.pipeline.confirm import ConfirmIntake, ViewLog

LEARN_QUEUE = 32  # edge.pipeline.confirm.LEARN_QUEUE


def test_a_flood_of_scans_does_not_grow_the_learning_queue() -> None:
    intake = ConfirmIntake(store=lambda: None, settings=LearningSettings(), views=ViewLog(empty_sku="EMPTY"))
    release = threading.Event()
    intake._pool.submit(release.wait, 30)  # the learning thread is busy (an embedding, an index swap)
    body = json.dumps({"barcode": "4011", "ts": 1.0}).encode()
    for _ in range(2000):
        intake.on_scan_message("storelens/s1/d1/events/scan", body)
    waiting = intake._pool._work_queue.qsize()  # what the learning thread holds in memory
    release.set()
    intake.close()
    assert waiting <= LEARN_QUEUE, waiting
    assert intake.counts["busy"] == 2000 - LEARN_QUEUE  # refused, counted, never silent


def test_home_assistant_cleared_topics_are_bounded(tmp_path: Path) -> None:
    link = MqttLink(settings=MqttSettings(host="127.0.0.1", port=1), prefix="storelens/s1/d1",
                    outbox=Outbox(path=tmp_path / "o.db"), client_id="x")  # never started: publishes are no-ops
    cam = CameraSettings(name="cam", source="0", rois=[RoiSettings(name="tray")])
    ha = HomeAssistantDiscovery(link=link, info=DeviceInfo(store="s1", device_id="d1", prefix="storelens/s1/d1"),
                                cameras=[cam])
    for i in range(5000):  # forged retained configs under this node's topics
        ha._on_config(f"homeassistant/sensor/{ha.info.node_id}/forged_{i}/config", b'{"name": "x"}', None)
    assert len(ha.removed) <= 64 and ha.removed_total == 5000
    assert ha.removed[-1].endswith("forged_4999/config")
