"""Home Assistant MQTT discovery against a real Mosquitto: the retained configs follow HA's documented
schema, the region state carries the decision, and a camera removed from the config loses its entities."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks._broker import Broker
from edge.core.config import CameraSettings, RoiSettings
from edge.ops.discovery import DeviceInfo, device_configs, region_state_topic, slug
from tests.ops_helpers import SKUS, base_config, make_runtime, merged, running, wait_for, write_config
from tests.runtime_helpers import Collector, TinyOnnxEncoder, write_catalog, write_frames

PREFIX = "storelens/s1/d1"
# HA: <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, ids from [a-zA-Z0-9_-]
TOPIC = re.compile(r"^homeassistant/(sensor|binary_sensor)/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/config$")


def check_schema(topic: str, cfg: dict[str, Any]) -> None:
    """The fields Home Assistant's discovery docs require or we rely on, with their documented shapes."""
    assert TOPIC.match(topic), topic
    assert isinstance(cfg["unique_id"], str) and cfg["unique_id"]
    assert isinstance(cfg["state_topic"], str) and cfg["state_topic"].startswith(PREFIX + "/")
    assert "#" not in cfg["state_topic"] and "+" not in cfg["state_topic"]
    assert cfg["availability"] == [{"topic": f"{PREFIX}/available", "payload_available": "online",
                                    "payload_not_available": "offline"}]
    dev = cfg["device"]
    assert dev["identifiers"] == ["storelens_s1_d1"] and dev["name"] and dev["sw_version"]
    assert cfg["origin"]["name"] == "StoreLens"
    assert cfg.get("entity_category") in (None, "diagnostic", "config")
    if cfg.get("device_class") == "enum":
        assert cfg["options"]


@pytest.fixture
def catalog(tmp_path: Path, tiny_onnx: Path) -> Path:
    return write_catalog(tmp_path / "catalog.json", TinyOnnxEncoder(tiny_onnx), SKUS)


def test_discovery_configs_and_state(tmp_path: Path, broker: Broker, tiny_onnx: Path, catalog: Path) -> None:
    frames = write_frames(tmp_path / "frames", ["RED"], per_sku=12)
    config = merged(base_config(tmp_path, frames, broker_port=broker.port), homeassistant={"enabled": True})
    config["cameras"].append({"name": "old", "source": str(frames), "fps": 10, "loop": True})
    sub = Collector(broker.port, "#", client_id="ha")
    try:
        rt = make_runtime(write_config(tmp_path / "a.toml", config), tiny_onnx, catalog)
        with running(rt):
            state_topic = f"{PREFIX}/cam/full/state"
            assert sub.wait(lambda: any(json.loads(p).get("sku") == "RED" for p in sub.of(state_topic)), 20)
        first_run = list(sub.messages)
        configs = {t: json.loads(p) for t, p, _ in first_run if t.startswith("homeassistant/") and p}
        # cam and old: product + decision + connected each; seven stats diagnostics
        assert len(configs) == 2 * 3 + 7, sorted(configs)
        for topic, cfg in configs.items():
            check_schema(topic, cfg)
        assert len({c["unique_id"] for c in configs.values()}) == len(configs)
        product = configs["homeassistant/sensor/storelens_s1_d1/cam_full_product/config"]
        assert product["state_topic"] == state_topic and product["value_template"] == "{{ value_json.product }}"
        state = json.loads(sub.of(state_topic)[-1])
        assert (state["product"], state["decision"], state["sku"]) == ("Red", "known", "RED")  # the catalog's name
        assert state["schema"] == "storelens.region_state/1"
        stats = [c for c in configs.values() if c["state_topic"] == f"{PREFIX}/stats"]
        assert len(stats) == 7 and all(c["entity_category"] == "diagnostic" for c in stats)

        # The next run has no camera `old`: its entities (and its region's retained state) are removed.
        config["cameras"] = config["cameras"][:1]
        rt2 = make_runtime(write_config(tmp_path / "b.toml", config), tiny_onnx, catalog)
        old = sorted(t for t in configs if "/old_" in t)
        with running(rt2):
            assert wait_for(lambda: sorted(rt2.hooks.discovery.removed) == old, 15), (  # type: ignore[union-attr]
                rt2.hooks.discovery.removed)  # type: ignore[union-attr]
    finally:
        sub.stop()
    late = Collector(broker.port, "#", client_id="late")
    try:
        # the broker sends retained messages on SUBACK, ahead of anything published later: once our own
        # marker is back, every retained message has arrived
        late.publish("test/late-marker", b"end")
        assert late.wait(lambda: late.of("test/late-marker"), 10)
        retained = {t for t, p, r in late.messages if r and p}  # a new subscriber gets retained messages only
        assert not any("/old_" in t or t.startswith(f"{PREFIX}/old/") for t in retained), sorted(retained)
        assert "homeassistant/sensor/storelens_s1_d1/cam_full_product/config" in retained
        assert f"{PREFIX}/cam/full/state" in retained and f"{PREFIX}/available" in retained
    finally:
        late.stop()


def test_ids_are_valid_and_distinct_for_awkward_names() -> None:
    assert slug("full") == "full" and slug("a b") != slug("a_b") and re.fullmatch(r"[A-Za-z0-9_-]+", slug("a/b+#"))
    cams = [CameraSettings(name="shelf.1", source="0", mode="shelf",
                           rois=[RoiSettings(name="top left", expected_sku="X"), RoiSettings(name="top_left")])]
    cfgs = device_configs(DeviceInfo(store="s1", device_id="d1", prefix=PREFIX), cams)
    for topic, cfg in cfgs.items():
        check_schema(topic, cfg)
    assert len({c["unique_id"] for c in cfgs.values()}) == len(cfgs) == 2 * 2 + 1 + 7
    decision = next(c for c in cfgs.values() if c["name"] == "shelf.1 top left decision")
    assert decision["options"] == ["ok", "misplaced", "empty", "unknown"]
    assert region_state_topic(PREFIX, "shelf.1", "top left") != region_state_topic(PREFIX, "shelf.1", "top_left")
