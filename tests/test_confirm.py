"""Confirmations in (edge.pipeline.confirm): a POS scan on events/scan, cmd/confirm and the kiosk's confirm
teach the catalog through the real runtime, a real catalog store and a real Mosquitto."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks._broker import Broker
from edge.catalog.learning import Learner
from edge.catalog.store import Store
from edge.core.errors import CommandError
from edge.pipeline.confirm import ConfirmIntake, ViewLog, attach_learning, parse_ts
from edge.pipeline.factory import assemble_runtime
from tests.encoders_for_tests import TinyImageEncoder
from tests.runtime_helpers import Collector, product_image, write_frames
from tests.test_runtime import PREFIX, run_until, settings

LEARN = {"hold_below": -1.0, "duplicate_cosine": 1.0}  # every confirmed crop is learned: the wiring is under test


@pytest.fixture
def store(tmp_path: Path, tiny_onnx: Path) -> Iterator[Store]:
    s = Store(data_dir=tmp_path / "data", image_encoder=TinyImageEncoder(tiny_onnx), dtype="f32")
    for sku, code in (("RED", "0731000000017"), ("GREEN", "731000000024"), ("BLUE", None), ("EMPTY", None)):
        s.enroll(sku, name=sku.title(), images=[product_image(sku, shift=10)], barcode=code)
    yield s
    s.close()


def wait(cond: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_a_scan_event_matches_the_view_on_the_tray(tmp_path: Path, broker: Broker, store: Store) -> None:
    frames = write_frames(tmp_path / "frames", ["EMPTY", "RED", "GREEN"], per_sku=8)
    s = settings(tmp_path, frames, broker=broker, learning=LEARN)
    rt = assemble_runtime(settings=s, encoder=store.image_encoder, matcher=store, out=io.StringIO())  # type: ignore[arg-type]
    intake = attach_learning(rt)
    assert intake is not None
    sub = Collector(broker.port, f"{PREFIX}/#")
    rt.start()
    try:
        run_until(rt, lambda: False, timeout=20)  # ends with the folder: EMPTY, then RED, then GREEN on the tray
        matches = sub.json_of("/cam/match")
        red = next(m for m in matches if m["decision"] == "known" and m["candidates"][0]["sku"] == "RED")
        green = next(m for m in matches if m["decision"] == "known" and m["candidates"][0]["sku"] == "GREEN")
        version = store.catalog_version
        # the cashier scans the item lying on the tray while RED was there (barcode without its leading zero)
        sub.publish(f"{PREFIX}/events/scan", json.dumps({"barcode": "731000000017", "ts": red["ts"] + 0.05}))
        assert wait(lambda: intake.counts["learned"] == 1)
        photo = Learner(store).learned()
        assert [(p.sku, p.source, p.ref) for p in photo] == [("RED", "scan", red["view_id"])]
        assert store.catalog_version == version + 1
        assert wait(lambda: any(st.get("catalog_version") == version + 1 and st["learning"]["photos"] == 1
                                for st in sub.json_of("/status")))  # the new version is published in status
        # a malformed scan is refused like a bad command, and counted
        sub.publish(f"{PREFIX}/events/scan", json.dumps({"barcode": "731000000024", "when": 1}))
        assert wait(lambda: intake.counts["refused"] == 1)
        # a store system confirms the GREEN view by its view id; the reply says what became of the crop
        reply = rt.router.handle("confirm", json.dumps({"view": green["view_id"], "sku": "GREEN"}).encode())
        assert reply["ok"] and reply["result"]["outcome"] == "learned" and reply["result"]["sku"] == "GREEN"
        assert reply["result"]["catalog_version"] == version + 2
        bad = rt.router.handle("confirm", json.dumps({"view": green["view_id"], "match_id": red["id"],
                                                      "sku": "GREEN"}).encode())
        assert not bad["ok"] and "exactly one" in bad["error"]
        gone = rt.router.handle("confirm", json.dumps({"match_id": "f" * 32, "sku": "GREEN"}).encode())
        assert not gone["ok"] and "crop" in gone["error"]
    finally:
        rt.shutdown()
        sub.stop()
        if intake is not None:
            intake.close()


def view(view_id: str, region: str, sku: str, ts: float) -> dict:
    return {"id": f"m-{view_id}", "view_id": view_id, "camera": region, "roi": "full", "ts": ts,
            "decision": "known", "candidates": [{"sku": sku, "name": sku, "score": 0.9}]}


def test_the_view_log_names_the_view_on_the_tray_at_a_time() -> None:
    log = ViewLog(empty_sku="EMPTY")
    crop = np.zeros((8, 8, 3), np.uint8)
    for v, sku, ts in (("v1", "EMPTY", 100.0), ("v2", "RED", 110.0), ("v3", "EMPTY", 120.0), ("v4", "BLUE", 150.0)):
        log.on_decision(view(v, "cam", sku, ts), crop)
    at = log.at
    assert at(90.0, window_s=10) is None  # nothing on the tray yet
    assert at(109.0, window_s=10).view_id == "v2"  # type: ignore[union-attr]  # scanned just before it decided
    assert at(115.0, window_s=10).view_id == "v2"  # type: ignore[union-attr]
    assert at(125.0, window_s=10).view_id == "v2"  # type: ignore[union-attr]  # lifted off, then scanned
    assert at(135.0, window_s=10) is None  # the tray has been empty too long
    assert at(151.0, window_s=10).view_id == "v4"  # type: ignore[union-attr]
    assert log.by_match("m-v2").view_id == "v2"  # type: ignore[union-attr]
    log.on_decision(view("w1", "cam2", "GREEN", 150.5), crop)
    with pytest.raises(CommandError):  # two kiosks showed a product then: the scan names neither
        at(151.0, window_s=10)


def test_scan_times_and_kiosk_confirmations(store: Store) -> None:
    assert parse_ts(1700000000) == 1700000000.0
    assert parse_ts("2026-12-01T10:00:00Z") == parse_ts("2026-12-01T10:00:00")
    with pytest.raises(CommandError):
        parse_ts(True)
    from edge.core.learning_settings import LearningSettings

    intake = ConfirmIntake(store=lambda: store, settings=LearningSettings(**LEARN), views=ViewLog(empty_sku="EMPTY"))
    try:
        assert intake.learner().sku_for_barcode("00731000000024") == "GREEN"
        assert intake.learner().sku_for_barcode("999") is None
        confirmation = SimpleNamespace(sku="BLUE", view_id="v9", id="c9")
        intake.on_kiosk_confirm(confirmation, product_image("BLUE"))
        assert wait(lambda: intake.counts["learned"] == 1)
        assert [(p.sku, p.source, p.ref) for p in intake.learner().learned()] == [("BLUE", "kiosk", "v9")]
    finally:
        intake.close()


def test_scan_window_s_bounds_how_long_a_scan_waits_for_its_view(store: Store) -> None:
    """learning.scan_window_s: a scan before its view decided waits for it; a scan up to the window after the
    product was lifted off still names it; later than that, or a wait past the window, is unmatched."""
    from edge.core.learning_settings import LearningSettings

    window = 1.0
    intake = ConfirmIntake(store=lambda: store, settings=LearningSettings(**LEARN, scan_window_s=window),
                           views=ViewLog(empty_sku="EMPTY"))
    crop = product_image("RED")

    def scan(ts: float) -> None:
        reply = intake.events.handle("scan", json.dumps({"barcode": "731000000017", "ts": ts}).encode())
        assert reply["ok"] and reply["result"] == {"sku": "RED"}, reply

    try:
        now = time.time()
        scan(now)  # nothing on the tray yet: the scan waits for its view
        assert intake.counts["learned"] == 0
        intake.on_decision(view("v1", "cam", "RED", now + 0.5), crop)
        assert wait(lambda: intake.counts["learned"] == 1)
        intake.on_decision(view("e1", "cam", "EMPTY", now + 1), None)  # lifted off the tray
        scan(now + 1 + 0.5 * window)  # scanned inside the window after: still the product's (v1's crop again)
        assert wait(lambda: intake.counts["from_scan"] == 2)
        received = time.time()
        scan(now + 1 + 3 * window)  # scanned long after it was lifted off: names no view, waits
        assert wait(lambda: time.time() > received + window, timeout=window + 5)  # its wait has run out
        intake.on_decision(view("e2", "cam", "EMPTY", now + 1 + 10 * window), None)  # a decision retries it
        assert wait(lambda: intake.counts["unmatched"] == 1)
        assert intake.counts["from_scan"] == 2 and [p.ref for p in intake.learner().learned()] == ["v1"]
    finally:
        intake.close()
