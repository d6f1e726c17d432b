"""The staff shelf page in a real headless Chromium, against a real runtime and a real Mosquitto.

A virtual shelf camera shows two facings side by side (the demo's cola and oats over the
tray, which the catalog knows as ``EMPTY``). Taking the cola away must become one ``empty``
alert on MQTT (``<prefix>/shelf/alert``, ``storelens.shelf-alert/1``) and on the page after
``shelf.alert_after_s``; "Done" acknowledges it (published, kept in the history); restocking
clears it once. Skipped without Playwright/Chromium like the kiosk browser tests.
"""

from __future__ import annotations

import io
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks._broker import Broker, free_port
from benchmarks._kiosk import EMPTY_SKU, build_catalog, by_sku, chromium_path, launch_chromium, wait_js
from edge.pipeline.demo import light_and_noise, place, render_product, tray_background
from tests.runtime_helpers import Collector

pytestmark = pytest.mark.slow

try:
    from playwright.sync_api import sync_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover
    HAVE_PLAYWRIGHT = False

if not HAVE_PLAYWRIGHT or chromium_path() is None:
    if os.environ.get("CI"):
        pytest.fail("the shelf browser test needs playwright and chromium (.ci/run installs them)", pytrace=False)
    pytest.skip("playwright or chromium not installed", allow_module_level=True)

TOKEN = "staff-secret-4242"
PLANNED = {"a1": "DEMO-COLA", "a2": "DEMO-OATS"}


class ShelfCamera:
    """Two facings side by side, each the demo tray with its product (or bare: sold out); noise every frame."""

    def __init__(self) -> None:
        self._rng = np.random.default_rng(11)
        self._bg = tray_background()
        self._views = {f: self._stocked(sku) for f, sku in PLANNED.items()}
        self._lock = threading.Lock()

    def _stocked(self, sku: str) -> np.ndarray:
        return place(self._bg, render_product(by_sku(sku)), np.random.default_rng(self._rng.integers(1 << 30)),
                     jitter=0.3)

    def set(self, facing: str, stocked: bool) -> None:
        with self._lock:
            self._views[facing] = self._stocked(PLANNED[facing]) if stocked else self._bg

    def read(self) -> np.ndarray:
        with self._lock:
            frame = np.hstack([self._views["a1"], self._views["a2"]])
        return light_and_noise(frame, self._rng, jitter=0.1)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from edge.catalog.store import Store
    from edge.core.config import load_settings
    from edge.models.encoders import load_image_encoder
    from edge.pipeline.factory import assemble_runtime

    work = tmp_path_factory.mktemp("shelf")
    (work / "broker").mkdir()
    broker = Broker(port=free_port(), workdir=work / "broker")
    broker.start()
    encoder = load_image_encoder(load_settings(None, device={"store": "s", "id": "d"}).model)
    threshold, margin = build_catalog(work / "data", encoder)
    settings = load_settings(
        None, device={"store": "corner-market", "id": "shelf-1"}, catalog={"data_dir": str(work / "data")},
        cameras=[{"name": "shelf", "source": "virtual", "fps": 10, "mode": "shelf",
                  "rois": [{"name": f, "rect": [0.5 * i, 0, 0.5, 1], "expected_sku": sku}
                           for i, (f, sku) in enumerate(PLANNED.items())]}],
        decision={"window": 5, "min_frames": 3, "threshold": threshold, "margin": margin, "empty_sku": EMPTY_SKU,
                  "heartbeat_s": 600},
        gate={"steady_frames": 0}, ocr={"enabled": False}, shelf={"alert_after_s": 1.5, "token": TOKEN},
        mqtt={"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 1, "flush_timeout_s": 2},
        kiosk_screen={"enabled": True, "port": free_port(), "token": "kiosk-secret-99999"})  # not the staff's
    camera = ShelfCamera()
    store = Store.from_settings(settings, image_encoder=encoder, text_encoder=None)
    rt = assemble_runtime(settings=settings, encoder=encoder, matcher=store, sources={"shelf": lambda: camera},
                          out=io.StringIO())
    collector = Collector(broker.port, f"{settings.topic_prefix}/#", client_id="shelf-test-subscriber")
    stop = threading.Event()
    rt.start()
    thread = threading.Thread(target=rt.run, args=(stop,), daemon=True)
    thread.start()
    pw = sync_playwright().start()
    browser = launch_chromium(pw)
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield {"rt": rt, "camera": camera, "collector": collector, "page": page, "errors": errors,
               "url": getattr(rt.screen, "url", "").rstrip("/") + "/shelf", "data": work / "data"}
    finally:
        browser.close()
        pw.stop()
        stop.set()
        thread.join(10)
        rt.shutdown()
        store.close()
        collector.stop()
        broker.stop()


def alerts(collector: Collector, event: str) -> list[dict[str, Any]]:
    return [m for m in collector.json_of("/shelf/alert") if m["event"] == event]


def test_the_page_needs_the_staff_token(shelf: dict[str, Any]) -> None:
    page = shelf["page"]
    assert page.goto(shelf["url"]).status == 401
    assert page.request.get(shelf["url"].replace("/shelf", "/shelf/api/state")).status == 401
    assert page.goto(shelf["url"] + "?token=wrong").status == 401
    resp = page.goto(shelf["url"] + f"?token={TOKEN}")
    assert resp.status == 200 and "token" not in page.url  # the cookie carries it from now on
    assert page.goto(shelf["url"].replace("/shelf", "/")).status == 401  # the kiosk page keeps its own token
    ack, origin = shelf["url"] + "/api/ack", shelf["url"].rsplit("/shelf", 1)[0]
    for body in ("not json", "[]", '{"alert_id": 7}', '{"alert_id": "' + "x" * 65 + '"}', "{}"):
        r = page.request.post(ack, data=body, headers={"Content-Type": "application/json", "Origin": origin})
        assert (r.status, r.json()["ok"]) == (400, False), body
    r = page.request.post(ack, data='{"alert_id": "no-such-alert"}',
                          headers={"Content-Type": "application/json", "Origin": origin})
    assert r.status == 404 and "no open alert" in r.json()["error"]


def test_an_empty_facing_alerts_on_the_page_and_mqtt_and_done_acknowledges_it(shelf: dict[str, Any]) -> None:
    page, collector, camera = shelf["page"], shelf["collector"], shelf["camera"]
    page.goto(shelf["url"] + f"?token={TOKEN}")
    page.wait_for_selector("#status[data-state=live]", timeout=30_000)
    page.wait_for_selector(".camera .facings li[data-state=ok]", timeout=60_000)  # the runtime decided
    assert page.locator("#alerts .alert").count() == 0
    camera.set("a1", stocked=False)
    assert collector.wait(lambda: alerts(collector, "open"), timeout=30)
    [opened] = alerts(collector, "open")
    assert opened["schema"] == "storelens.shelf-alert/1"
    assert (opened["facing"], opened["state"], opened["expected_sku"]) == ("a1", "empty", "DEMO-COLA")
    assert opened["opened"] - opened["since"] >= 1.5 and opened["crop_id"]
    item = page.locator(f".alert[data-id='{opened['alert_id']}']")
    item.wait_for(timeout=10_000)
    assert item.get_attribute("data-state") == "empty" and "a1" in item.inner_text()
    assert item.locator("img.crop").evaluate("i => i.complete && i.naturalWidth > 0")
    page.wait_for_selector(".facings li[data-state=empty]", timeout=10_000)
    if shot := os.environ.get("SHELF_PAGE_SCREENSHOT"):  # docs/shelf-staff-page.png is made this way
        wait_js(page, "[...document.images].every(i => i.complete)", timeout_s=10, what="the page's images loaded")
        page.screenshot(path=shot, full_page=True)
    item.locator("button.done").click()
    assert collector.wait(lambda: alerts(collector, "ack"), timeout=10)
    [ack] = alerts(collector, "ack")
    assert ack["alert_id"] == opened["alert_id"] and ack["acked"] is not None
    item.wait_for(state="detached", timeout=10_000)
    camera.set("a1", stocked=True)  # restocked: the alert clears, once
    assert collector.wait(lambda: alerts(collector, "clear"), timeout=30)
    db = sqlite3.connect(Path(shelf["data"]) / "shelf" / "history.db")
    row = db.execute("SELECT state, acked, cleared FROM alerts WHERE id = ?", (opened["alert_id"],)).fetchone()
    db.close()
    assert row[0] == "empty" and row[1] is not None and row[2] is not None
    assert len(alerts(collector, "clear")) == 1 and len(alerts(collector, "open")) == 1
    assert shelf["errors"] == []
