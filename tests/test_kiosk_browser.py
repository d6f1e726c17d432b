"""The kiosk screen in a real headless Chromium, against a real runtime and a real Mosquitto.

The runtime runs the embedded image encoder on a real catalog store (the demo's rendered products
with prices and shelf locations, and the empty tray); a virtual camera plays what the test puts
on the tray. Chromium is Debian's ``chromium`` driven by Playwright with ``executable_path``
(``.ci/run`` installs both); without them the module is skipped, except in CI where that fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks._broker import Broker, free_port
from benchmarks._kiosk import (
    MYSTERY,
    KioskRig,
    TrayCamera,
    build_catalog,
    by_sku,
    chromium_path,
    kiosk_settings,
    launch_chromium,
    wait_live,
    wait_rendered,
)
from benchmarks._kiosk import (
    show as kiosk_show,
)
from tests.requires import missing
from tests.runtime_helpers import Collector

pytestmark = pytest.mark.slow

try:
    from playwright.sync_api import sync_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - the browser extra is not installed
    HAVE_PLAYWRIGHT = False

if not HAVE_PLAYWRIGHT or chromium_path() is None:
    missing("playwright or chromium not installed (pip install -e '.[browser]'; apt-get install chromium; "
            ".ci/run installs both)")



@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Broker, catalog, runtime with the kiosk screen, a subscriber and a Chromium page on the screen."""
    from edge.core.config import load_settings
    from edge.models.encoders import load_image_encoder

    work = tmp_path_factory.mktemp("kiosk")
    (work / "broker").mkdir()
    broker = Broker.on_free_port(work / "broker")
    broker.start()
    encoder = load_image_encoder(load_settings(None, device={"store": "s", "id": "d"}).model)
    threshold, margin = build_catalog(work / "data", encoder)
    settings = kiosk_settings(work / "data", broker_port=broker.port, kiosk_port=free_port(), threshold=threshold,
                              margin=margin)
    camera = TrayCamera()
    kiosk = KioskRig(settings, encoder, camera)
    kiosk.start()
    kiosk.wait_ready()  # MQTT subscriptions acknowledged, the camera being read
    collector = Collector(broker.port, f"{settings.topic_prefix}/#", client_id="kiosk-test-subscriber")
    pw = sync_playwright().start()
    browser = launch_chromium(pw)
    page = browser.new_page(viewport={"width": 1080, "height": 1920})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(kiosk.rt.screen.url)
    page.evaluate("window.__loadedOnce = 'first load'")  # survives only as long as the page is not reloaded
    # ready = the page's event stream said hello and the runtime's first decision (the encoder warmed up on
    # real frames) reached the page; the tests' time limits then only measure what they are about
    wait_live(page, timeout_s=60)
    wait_rendered(page, after=0, timeout_s=60)
    try:
        yield {"broker": broker, "rig": kiosk, "camera": camera, "collector": collector, "page": page,
               "settings": settings, "errors": errors}
    finally:
        browser.close()
        pw.stop()
        collector.stop()
        kiosk.stop()
        broker.stop()


def show(rig: dict[str, Any], product: Any, *, kind: str, sku: str | None = None) -> dict[str, Any]:
    """Put ``product`` on the tray; the page render that follows (``kind`` / ``sku``), or the current one."""
    return kiosk_show(rig["page"], rig["camera"], product, kind=kind, sku=sku, timeout_s=20)


def test_showing_a_product_puts_its_name_price_and_place_on_the_page(rig: dict[str, Any]) -> None:
    """What the page shows; how fast it shows it is benchmarks.kiosk's to measure (no timing band in a test)."""
    page = rig["page"]
    show(rig, None, kind="empty")
    assert page.locator("#view-empty h1").inner_text() == "Nothing on the tray"
    cola = by_sku("DEMO-COLA")
    shown = show(rig, cola, kind="known", sku=cola.sku)
    assert shown["shown_ms"] > 0 and shown["emitted_ms"] > 0  # timed both ends (benchmarks.kiosk reports the gap)
    assert page.locator("#p-name").inner_text() == cola.name
    assert page.locator("#p-price").inner_text().replace("\u00a0", " ") == "SEK 14.90"
    assert page.locator("#p-loc").inner_text() == "Aisle 3 · Drinks"
    assert page.locator("#p-photo img").evaluate("img => img.complete && img.naturalWidth > 0")
    shown_id = _shown_match(page)
    assert rig["collector"].wait(lambda: any(m["id"] == shown_id for m in rig["collector"].json_of("/cam/match")))
    match = next(m for m in reversed(rig["collector"].json_of("/cam/match")) if m["id"] == shown_id)
    assert match["decision"] == "known" and match["candidates"][0]["sku"] == cola.sku


def test_recommendations_appear_for_the_shown_product(rig: dict[str, Any]) -> None:
    page = rig["page"]
    show(rig, by_sku("DEMO-COLA"), kind="known", sku="DEMO-COLA")  # idempotent when it is already shown
    page.wait_for_selector("#recs-together .card", timeout=10_000)
    page.wait_for_selector("#recs-similar .card", timeout=10_000)
    together = page.locator("#recs-together .card").evaluate_all("cs => cs.map(c => c.dataset.sku)")
    assert together[0] == "DEMO-CHOC"  # bought with cola in 3 of its 4 baskets
    assert "DEMO-COLA" not in together and "EMPTY" not in together
    assert page.locator("#recs-together h2").inner_text() == "Bought together"
    similar = page.locator("#recs-similar .card").evaluate_all("cs => cs.map(c => c.dataset.sku)")
    assert similar and "DEMO-COLA" not in similar and "EMPTY" not in similar


def test_unknown_item_shows_candidates_and_a_tap_confirms_over_mqtt(rig: dict[str, Any]) -> None:
    page, collector = rig["page"], rig["collector"]
    show(rig, None, kind="empty")
    shown = show(rig, MYSTERY, kind="unknown")
    cards = page.locator("#u-cards .card")
    assert cards.count() >= 2 and page.locator("#u-title").inner_text() == "Is it one of these?"
    # the page can render before the MQTT copy of the same match reaches the subscriber: wait for it
    assert collector.wait(lambda: any(m["id"] == shown["match_id"] for m in collector.json_of("/cam/match")))
    unknown = next(m for m in collector.json_of("/cam/match") if m["id"] == shown["match_id"])
    assert unknown["decision"] == "unknown"
    tapped = cards.nth(1).get_attribute("data-sku")
    cards.nth(1).click()
    assert collector.wait(lambda: collector.json_of("/cam/confirm"), timeout=10)
    confirm = collector.json_of("/cam/confirm")[-1]
    assert (confirm["schema"], confirm["sku"], confirm["match_id"], confirm["decision"]) == \
        ("storelens.confirm/1", tapped, unknown["id"], "unknown")
    assert confirm["view_id"] and confirm["crop_kept"] and confirm["device"] == "kiosk-1"
    page.wait_for_selector("#p-confirmed:not([hidden])", timeout=5000)
    assert page.locator("#p-name").inner_text() == next(p.name for p in _products() if p.sku == tapped)
    kept = rig["rig"].rt.screen.confirmations.recent(1)[0]
    assert (kept.id, kept.sku, kept.match_id) == (confirm["id"], tapped, unknown["id"])
    crop = rig["rig"].rt.screen.confirmations.load_crop(kept)
    assert crop is not None and crop.shape[2] == 3


def test_search_returns_cards_and_a_result_corrects_an_unknown_item(rig: dict[str, Any]) -> None:
    page, collector = rig["page"], rig["collector"]
    show(rig, None, kind="empty")
    page.fill("#q", "oats")
    page.press("#q", "Enter")
    page.wait_for_selector("#results:not([hidden]) #r-cards .card", timeout=10_000)
    assert page.locator("#r-cards .card").first.get_attribute("data-sku") == "DEMO-OATS"
    assert "Morning Oats" in page.locator("#r-cards .card").first.inner_text()
    page.click("#r-close")
    before = len(collector.json_of("/cam/confirm"))
    shown = show(rig, MYSTERY, kind="unknown")
    page.fill("#q", "yoghurt")
    page.press("#q", "Enter")
    page.wait_for_selector("#results:not([hidden]) #r-cards .card[data-sku='DEMO-BERRY']", timeout=10_000)
    page.click("#r-cards .card[data-sku='DEMO-BERRY']")
    assert collector.wait(lambda: len(collector.json_of("/cam/confirm")) > before, timeout=10)
    confirm = collector.json_of("/cam/confirm")[-1]
    assert (confirm["sku"], confirm["match_id"], confirm["source"]) == ("DEMO-BERRY", shown["match_id"], "search")


def test_a_failed_confirm_tells_the_shopper_and_a_retry_goes_through(rig: dict[str, Any]) -> None:
    """A real device-side failure (the confirmations database locked by another writer): the page says it
    could not confirm, publishes nothing, and the next tap works once the lock is gone."""
    import sqlite3

    page, collector = rig["page"], rig["collector"]
    store = rig["rig"].rt.screen.confirmations
    store._db.execute("PRAGMA busy_timeout = 50")  # fail fast instead of the production 5 s wait
    show(rig, None, kind="empty")
    show(rig, MYSTERY, kind="unknown")
    cards = page.locator("#u-cards .card")
    before, kept = len(collector.json_of("/cam/confirm")), store.count()
    other = sqlite3.connect(store.folder / "confirmations.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with page.expect_response(lambda r: r.url.endswith("/api/confirm")) as failed:
            cards.nth(0).click()
        assert failed.value.status == 500
        page.wait_for_selector("#toast:not([hidden])", timeout=5000)
        assert page.locator("#toast").inner_text() == "Could not confirm that. Please try again."
        assert store.count() == kept
        other.execute("ROLLBACK")
    finally:
        other.close()
    with page.expect_response(lambda r: r.url.endswith("/api/confirm")) as retried:
        cards.nth(0).click()
    assert retried.value.status == 200
    assert collector.wait(lambda: len(collector.json_of("/cam/confirm")) == before + 1, timeout=10)
    assert store.count() == kept + 1 and rig["errors"] == []


def test_broker_restart_page_recovers_without_reload(rig: dict[str, Any]) -> None:
    page, broker, collector = rig["page"], rig["broker"], rig["collector"]
    show(rig, None, kind="empty")
    broker.stop()
    page.wait_for_selector("#status[data-state='store-offline']", timeout=10_000)
    oats = show(rig, by_sku("DEMO-OATS"), kind="known", sku="DEMO-OATS")  # decisions still reach the screen
    assert oats["sku"] == "DEMO-OATS"
    broker.start()
    page.wait_for_selector("#status[data-state='live']", timeout=20_000)
    assert rig["rig"].rt.link.wait_subscribed(20)
    show(rig, None, kind="empty")
    mint = show(rig, by_sku("DEMO-MINT"), kind="known", sku="DEMO-MINT")
    assert page.locator("#p-name").inner_text() == "Cool Mint Tea"
    assert page.evaluate("window.__loadedOnce") == "first load"  # the same page: never reloaded
    assert collector.wait(lambda: any(m["id"] == oats["match_id"] for m in collector.json_of("/cam/match")),
                          timeout=20)  # the decision made while the broker was away arrived from the outbox
    assert any(m["id"] == mint["match_id"] for m in collector.json_of("/cam/match")) or collector.wait(
        lambda: any(m["id"] == mint["match_id"] for m in collector.json_of("/cam/match")), timeout=10)


def test_runtime_restart_page_reconnects_by_itself(rig: dict[str, Any]) -> None:
    page, kiosk = rig["page"], rig["rig"]
    connects = page.evaluate("window.__kiosk.connects")
    kiosk.stop()
    page.wait_for_selector("#status[data-state='connecting']", timeout=10_000)
    time.sleep(1.0)  # the page keeps retrying while the runtime is away
    kiosk.start()
    kiosk.wait_ready()
    wait_live(page, connects=connects, timeout_s=30)
    assert page.evaluate("window.__kiosk.connects") > connects
    show(rig, None, kind="empty")
    choc = show(rig, by_sku("DEMO-CHOC"), kind="known", sku="DEMO-CHOC")
    assert page.locator("#p-name").inner_text() == "Dark Chocolate 70%" and choc["sku"] == "DEMO-CHOC"
    assert page.evaluate("window.__loadedOnce") == "first load"
    assert rig["errors"] == []


def test_every_asset_comes_from_the_device(rig: dict[str, Any]) -> None:
    page = rig["page"]
    urls = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(rig["rig"].rt.screen.url) for u in urls), urls
    assert rig["errors"] == []


def _shown_match(page: Any) -> str:
    return str(page.evaluate("window.__kiosk.last.match_id"))


def _products() -> list[Any]:
    from edge.pipeline.demo import DEMO_PRODUCTS

    return list(DEMO_PRODUCTS)
