"""The kiosk screen's parts without a browser: confirmations store, page events, the page's three verbs
(with the MQTT command validation), and the HTTP server (real aiohttp on a loopback port)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from benchmarks._broker import free_port
from edge.catalog.db import Catalog, Product
from edge.kiosk.actions import CONFIRM_SCHEMA, KioskActions
from edge.kiosk.cards import ProductCards, location_of
from edge.kiosk.confirmations import ConfirmationStore
from edge.kiosk.hub import KioskHub
from edge.kiosk.labels import LABELS, LOCALES, labels_for
from edge.kiosk.server import STATIC_DIR, KioskServer, PageConfig
from tests.runtime_helpers import demo_device

PRODUCTS = [("COLA", "Fizzy Cola", 14.9, "Aisle 3", {}), ("OATS", "Morning Oats", 32.5, None, {"aisle": 5}),
            ("TEA", "Mint Tea", None, None, {}), ("EMPTY", "Empty tray", None, None, {})]


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    cat = Catalog(tmp_path / "catalog.db")
    with cat.transaction() as db:
        for sku, name, price, loc, attrs in PRODUCTS:
            key = cat.upsert_product(db, Product(key=0, sku=sku, name=name, price=price, location=loc,
                                                 attributes=attrs))
            img = tmp_path / f"{sku}.jpg"
            cv2.imwrite(str(img), np.full((300, 400, 3), (40, 90, 200), np.uint8))
            cat.add_image(db, key, str(img))
    yield cat
    cat.close()


@pytest.fixture
def parts(tmp_path: Path, catalog: Catalog) -> dict[str, Any]:
    cards = ProductCards(catalog, hidden=frozenset({"EMPTY"}))
    hub = KioskHub(cards, camera="cam", empty_sku="EMPTY", candidates=3)
    sent: list[tuple[str, dict[str, Any]]] = []
    store = ConfirmationStore(tmp_path / "confirmations", max_items=3)
    actions = KioskActions(hub=hub, cards=cards, confirmations=store, publish=lambda t, m: sent.append((t, m)),
                           device="d1", search=lambda q, k: [p for p in catalog.products() if q.lower() in
                                                             p.name.lower()][:k], max_bytes=2048)
    return {"cards": cards, "hub": hub, "sent": sent, "store": store, "actions": actions}


def match(decision: str, skus: list[str], *, camera: str = "cam", heartbeat: bool = False) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "camera": camera, "roi": "tray", "decision": decision, "ts": 1.0,
            "heartbeat": heartbeat, "catalog_version": 7,
            "candidates": [{"sku": s, "name": s, "score": 0.9 - 0.1 * i} for i, s in enumerate(skus)]}


def test_confirmations_are_bounded_with_their_crops(tmp_path: Path) -> None:
    store = ConfirmationStore(tmp_path / "c", max_items=2)
    crop = np.full((20, 30, 3), 200, np.uint8)
    made = [store.add(match_id=f"{i:08x}", view_id=f"v{i}", camera="cam", roi="tray", sku="COLA", decision="unknown",
                      predicted_sku=None, source="candidate", crop=crop, catalog_version=3) for i in range(3)]
    assert store.count() == 2 and [c.id for c in store.recent()] == [made[2].id, made[1].id]
    assert not (store.crops_dir / str(made[0].crop)).exists()  # the dropped one's crop went with it
    loaded = store.load_crop(made[2])
    assert loaded is not None and loaded.shape == (20, 30, 3)
    assert [c.id for c in store.iter_all(sku="COLA")] == [made[1].id, made[2].id]
    assert store.delete([made[1].id]) == 1 and store.count() == 1
    no_crop = store.add(match_id="ab" * 8, view_id=None, camera="cam", roi="tray", sku="TEA", decision="known",
                        predicted_sku="COLA", source="search")
    assert no_crop.crop is None and no_crop.corrected and store.load_crop(no_crop) is None
    store.close()
    assert ConfirmationStore(tmp_path / "c", max_items=2).count() == 2  # kept on disk


def test_cards_and_location(parts: dict[str, Any], catalog: Catalog) -> None:
    cards: ProductCards = parts["cards"]
    assert cards.card("COLA") == {"sku": "COLA", "name": "Fizzy Cola", "price": 14.9, "location": "Aisle 3",
                                  "image": "/img/COLA"}
    oats = catalog.get("OATS")
    assert oats is not None and location_of(oats) == "Aisle 5"
    assert cards.card("EMPTY") is None and cards.photo("EMPTY") is None
    photo = cards.photo("COLA")
    assert photo is not None and photo[:2] == b"\xff\xd8"
    decoded = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and max(decoded.shape[:2]) <= 640


def test_hub_events_known_unknown_empty_and_other_cameras(parts: dict[str, Any]) -> None:
    hub: KioskHub = parts["hub"]
    known = hub.on_match(match("known", ["COLA", "OATS", "EMPTY", "TEA"]), view_id="v1")
    assert known is not None and known["kind"] == "known" and known["product"]["name"] == "Fizzy Cola"
    assert [c["sku"] for c in known["candidates"]] == ["OATS", "TEA"]  # alternatives, never the empty entry
    unknown = hub.on_match(match("unknown", ["TEA", "EMPTY", "OATS", "COLA"]), view_id="v2")
    assert unknown is not None and unknown["kind"] == "unknown" and unknown["product"] is None
    assert [c["sku"] for c in unknown["candidates"]] == ["TEA", "OATS", "COLA"]
    for m in (match("known", ["EMPTY", "COLA"]), match("unknown", ["EMPTY", "TEA"])):
        ev = hub.on_match(m, view_id="v3")
        assert ev is not None and ev["kind"] == "empty"
    assert hub.on_match(match("known", ["COLA"], camera="other")) is None
    assert hub.current is not None and hub.current["view_id"] == "v3"


def test_confirm_publishes_keeps_and_sticks_to_the_view(parts: dict[str, Any]) -> None:
    hub: KioskHub = parts["hub"]
    actions: KioskActions = parts["actions"]
    events: list[dict[str, Any]] = []
    actions.set_event_sink(events.append)
    m = match("unknown", ["TEA", "OATS"])
    hub.on_match(m, view_id="v9", crop=np.zeros((8, 8, 3), np.uint8))
    status, reply = actions.handle("confirm", json.dumps({"match_id": m["id"], "sku": "OATS"}).encode())
    assert status == 200 and reply["ok"], reply
    ((topic, msg),) = parts["sent"]
    assert topic == "cam/confirm" and msg["schema"] == CONFIRM_SCHEMA
    assert (msg["match_id"], msg["view_id"], msg["sku"], msg["decision"], msg["crop_kept"]) == \
        (m["id"], "v9", "OATS", "unknown", True)
    (kept,) = parts["store"].recent()
    assert (kept.id, kept.sku, kept.view_id) == (msg["id"], "OATS", "v9")
    assert events[-1]["kind"] == "known" and events[-1]["confirmed"] and events[-1]["product"]["sku"] == "OATS"
    heartbeat = hub.on_match(match("unknown", ["TEA"], heartbeat=True), view_id="v9")
    assert heartbeat is not None and heartbeat["confirmed"] and heartbeat["product"]["sku"] == "OATS"


@pytest.mark.parametrize(("verb", "body", "status", "error"), [
    ("confirm", {"match_id": "0" * 32, "sku": "COLA"}, 400, "not one the screen showed"),
    ("confirm", {"match_id": "../../etc", "sku": "COLA"}, 400, "not a match id"),
    ("search", {"q": "x" * 201}, 400, "at most 200"),
    ("search", {"q": "cola", "k": 1000}, 400, "from 1 to 24"),
    ("recommend", {"sku": "EMPTY"}, 400, "not a product"),
    ("enroll", {"sku": "NEW", "name": "x", "images": []}, 400, "unknown command"),
    ("remove", {"sku": "COLA"}, 400, "unknown command"),
    ("reload", {}, 400, "unknown command"),
])
def test_page_requests_get_command_validation(parts: dict[str, Any], verb: str, body: dict[str, Any], status: int,
                                              error: str) -> None:
    got, reply = parts["actions"].handle(verb, json.dumps(body).encode())
    assert (got, reply["ok"]) == (status, False) and error in reply["error"]


def test_size_limit_and_token(tmp_path: Path, parts: dict[str, Any]) -> None:
    actions: KioskActions = parts["actions"]
    status, reply = actions.handle("search", json.dumps({"q": "a" * 3000}).encode())
    assert status == 413 and "exceeds the limit of 2048" in reply["error"]
    guarded = KioskActions(hub=parts["hub"], cards=parts["cards"], confirmations=parts["store"],
                           publish=lambda t, m: None, device="d1", search=lambda q, k: [], token="s3cret")
    assert guarded.handle("search", b'{"q": "cola"}')[0] == 403
    assert guarded.handle("search", b'{"q": "cola", "token": "nope"}')[0] == 403
    assert guarded.handle("search", b'{"q": "cola", "token": "s3cret"}')[0] == 200


def test_search_results_are_cards(parts: dict[str, Any]) -> None:
    status, reply = parts["actions"].handle("search", b'{"q": "a"}')
    assert status == 200
    assert [c["sku"] for c in reply["result"]["results"]] == ["COLA", "OATS", "TEA"]  # the empty entry left out


def test_recommendations_are_complements_then_popular(tmp_path: Path, parts: dict[str, Any]) -> None:
    from edge.core.config import RecommendSettings
    from edge.recommend.service import open_recommender

    rec = open_recommender(RecommendSettings(), data_dir=tmp_path)
    for i, basket in enumerate([["COLA", "OATS"], ["COLA", "OATS", "EMPTY"], ["TEA", "OATS"], ["TEA", "OATS"]]):
        rec.handle_basket_message(json.dumps({"id": i, "skus": basket}))
    actions = KioskActions(hub=parts["hub"], cards=parts["cards"], confirmations=parts["store"],
                           publish=lambda t, m: None, device="d1", recommender=rec)
    cola = actions.recommendations("COLA")
    assert [(c["sku"], c["source"]) for c in cola["together"]] == [("OATS", "together")]  # no popular fill-ins
    assert cola["similar"] == []  # no product vectors: "similar" is off, the rest still shows
    status, reply = actions.handle("recommend", b'{"sku": "COLA"}')
    assert status == 200 and reply["result"]["together"][0]["name"] == "Morning Oats"


def test_every_language_has_every_label() -> None:
    assert set(LABELS) == set(LOCALES) == {"en", "sv"}
    assert all(set(words) == set(LABELS["en"]) and all(words.values()) for words in LABELS.values())
    assert labels_for("xx") == LABELS["en"]
    html = (STATIC_DIR / "index.html").read_text()
    used = {part.split('"')[1] for part in html.split("data-label=")[1:]}
    assert used <= set(LABELS["en"])
    assert "http" not in html.replace("http-equiv", "") and "//" not in (STATIC_DIR / "kiosk.css").read_text()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_routes_headers_and_guards(parts: dict[str, Any]) -> None:
    page = PageConfig(language="sv", locale="sv-SE", labels=labels_for("sv"), currency="SEK", device="d1",
                      title="Butik </script>")
    srv = KioskServer(host="127.0.0.1", port=0, hub=parts["hub"], actions=parts["actions"],
                      cards=parts["cards"], page=page)
    srv.start()
    try:
        status, body, headers = _get(srv.url)
        html = body.decode()
        assert status == 200 and '<html lang="sv">' in html and "Inget på brickan" in html
        assert "</script>\"" not in html and "default-src 'self'" in headers["Content-Security-Policy"]
        assert _get(srv.url + "static/kiosk.js")[0] == 200 and _get(srv.url + "static/../server.py")[0] == 404
        status, photo, headers = _get(srv.url + "img/COLA")
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and photo[:2] == b"\xff\xd8"
        assert _get(srv.url + "img/NOPE")[0] == 404 and _get(srv.url + "img/EMPTY")[0] == 404
        assert _post(srv.url + "api/search", b'{"q": "oats"}')[1]["result"]["results"][0]["sku"] == "OATS"
        assert _post(srv.url + "api/enroll", b"{}")[0] == 404
        assert _post(srv.url + "api/search", b"x" * 5000)[0] == 413
        assert _get(srv.url, {"Host": "evil.example:80"})[0] == 403  # DNS rebinding
        assert _post(srv.url + "api/search", b'{"q": "oats"}', {"Origin": "http://evil.example"})[0] == 403
    finally:
        srv.stop()


def test_events_stream_hello_then_decisions(parts: dict[str, Any]) -> None:
    page = PageConfig(language="en", locale="en-GB", labels=labels_for("en"), currency="SEK", device="d1", title="t")
    srv = KioskServer(host="127.0.0.1", port=0, hub=parts["hub"], actions=parts["actions"],
                      cards=parts["cards"], page=page, link_status=lambda: "online")
    srv.start()
    try:
        with urllib.request.urlopen(srv.url + "events", timeout=5) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            lines = iter(stream)
            assert next(lines) == b"retry: 1000\n"
            hello = _next_event(lines)
            assert hello["type"] == "hello" and hello["state"] is None
            event = parts["hub"].on_match(match("known", ["COLA"]), view_id="v1")
            srv.broadcast(event)
            got = _next_event(lines)
            if got["type"] == "link":  # the broker state, unless the hello already carried it
                assert got["broker"] == "online"
                got = _next_event(lines)
            assert got["type"] == "decision" and got["product"]["sku"] == "COLA"
    finally:
        srv.stop()


def _next_event(lines: Iterator[bytes]) -> dict[str, Any]:
    for line in lines:
        if line.startswith(b"data: "):
            return dict(json.loads(line[6:]))
    raise AssertionError("stream ended")


def test_port_in_use_is_a_config_error(parts: dict[str, Any]) -> None:
    from edge.core.errors import ConfigError

    page = PageConfig(language="en", locale="en-GB", labels=labels_for("en"), currency="SEK", device="d1", title="t")
    first = KioskServer(host="127.0.0.1", port=0, hub=parts["hub"], actions=parts["actions"],
                        cards=parts["cards"], page=page)
    first.start()
    port = first.port
    try:
        second = KioskServer(host="127.0.0.1", port=port, hub=parts["hub"], actions=parts["actions"],
                             cards=parts["cards"], page=page)
        with pytest.raises(ConfigError, match=r"kiosk_screen\.port"):
            second.start()
    finally:
        first.stop()


def test_storelens_run_serves_the_kiosk_screen(tmp_path: Path) -> None:
    """`storelens run` with `[kiosk_screen] enabled = true` serves the page while it runs."""
    import threading
    import time

    from edge.cli.main import main

    data, frames = demo_device(tmp_path, price=10.0)
    port = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[device]\nstore = "s1"\nid = "d1"\n[catalog]\ndata_dir = "{data}"\n'
                   f'[[cameras]]\nname = "cam"\nsource = "{frames}"\nfps = 10\nloop = true\n'
                   '[decision]\nthreshold = 0.9\nmargin = 0.05\n[ocr]\nenabled = false\n'
                   f'[kiosk_screen]\nenabled = true\nport = {port}\nlanguage = "sv"\ntitle = "Hörnbutiken"\n')
    seen: dict[str, Any] = {}

    def poll() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "html" not in seen:
            try:
                seen["html"] = _get(f"http://127.0.0.1:{port}/")[1].decode()
                seen["health"] = json.loads(_get(f"http://127.0.0.1:{port}/healthz")[1])
            except OSError:
                time.sleep(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    assert main(["run", "--config", str(cfg), "--no-mqtt", "--duration", "8"]) == 0
    poller.join()
    assert "Hörnbutiken" in seen["html"] and '<html lang="sv">' in seen["html"]
    assert seen["health"] == {"ok": True, "clients": 0, "broker": "off"}
    with pytest.raises(OSError):  # stopped with the runtime
        _get(f"http://127.0.0.1:{port}/healthz")


def test_kiosk_camera_must_be_configured(tmp_path: Path, catalog: Catalog) -> None:
    from edge.core.config import load_settings
    from edge.core.errors import ConfigError
    from edge.kiosk.screen import create_screen

    s = load_settings(None, device={"store": "s1", "id": "d1"}, catalog={"data_dir": str(tmp_path)},
                      cameras=[{"name": "cam", "source": "0"}], kiosk_screen={"enabled": True, "camera": "door"})
    with pytest.raises(ConfigError, match="not a configured camera"):
        create_screen(s, catalog=catalog, publish=lambda t, m: None)


def test_a_late_confirmation_counts_but_does_not_take_the_screen_back(parts: dict[str, Any]) -> None:
    hub: KioskHub = parts["hub"]
    actions: KioskActions = parts["actions"]
    events: list[dict[str, Any]] = []
    actions.set_event_sink(events.append)
    old = match("unknown", ["TEA", "OATS"])
    hub.on_match(old, view_id="v1")
    hub.on_match(match("known", ["COLA"]), view_id="v2")  # the tray changed before the tap arrived
    status, _ = actions.handle("confirm", json.dumps({"match_id": old["id"], "sku": "TEA"}).encode())
    assert status == 200 and [m["sku"] for _, m in parts["sent"]] == ["TEA"]
    assert events == [] and hub.current is not None and hub.current["product"]["sku"] == "COLA"


def _page() -> PageConfig:
    return PageConfig(language="en", locale="en-GB", labels=labels_for("en"), currency="SEK", device="d1", title="t")


def test_a_device_failure_answers_5xx_with_a_message_and_the_next_request_works(parts: dict[str, Any]) -> None:
    """`database is locked` while a confirmation is kept is the device's failure: 500 saying so, not a 400."""
    import sqlite3

    store: ConfirmationStore = parts["store"]
    store._db.execute("PRAGMA busy_timeout = 50")  # fail fast instead of waiting the production 5 s
    m = match("unknown", ["TEA", "OATS"])
    parts["hub"].on_match(m, view_id="v1")
    body = json.dumps({"match_id": m["id"], "sku": "OATS"}).encode()
    srv = KioskServer(host="127.0.0.1", port=0, hub=parts["hub"], actions=parts["actions"], cards=parts["cards"],
                      page=_page())
    srv.start()
    other = sqlite3.connect(store.folder / "confirmations.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        status, reply = _post(srv.url + "api/confirm", body)
        assert status == 500, (status, reply)
        assert reply["ok"] is False and reply["code"] == "internal"
        assert "database is locked" in reply["error"] and "on the device" in reply["error"], reply
        assert parts["sent"] == [] and store.count() == 0  # nothing half-done
        other.execute("ROLLBACK")
        status, reply = _post(srv.url + "api/confirm", body)  # the page's retry goes through
        assert status == 200 and reply["ok"] and store.count() == 1, reply
        assert _post(srv.url + "api/search", b'{"q": "x" }')[0] == 200  # client errors stay 4xx: see the table
    finally:
        other.close()
        srv.stop()


def test_photo_missing_or_corrupt_is_a_404_and_a_readable_one_is_served(tmp_path: Path, parts: dict[str, Any],
                                                                       catalog: Catalog) -> None:
    gone, corrupt, good = tmp_path / "gone.jpg", tmp_path / "corrupt.jpg", tmp_path / "good.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg" * 10)
    cv2.imwrite(str(good), np.full((64, 64, 3), 128, np.uint8))
    with catalog.transaction() as db:
        for sku, images in (("GONE", [gone]), ("BAD", [corrupt]), ("MIXED", [gone, corrupt, good])):
            key = catalog.upsert_product(db, Product(key=0, sku=sku, name=sku, price=None, location=None,
                                                     attributes={}))
            for img in images:
                catalog.add_image(db, key, str(img))
    srv = KioskServer(host="127.0.0.1", port=0, hub=parts["hub"], actions=parts["actions"], cards=parts["cards"],
                      page=_page())
    srv.start()
    try:
        assert _get(srv.url + "img/GONE")[0] == 404  # the page shows its placeholder (img.onerror)
        assert _get(srv.url + "img/BAD")[0] == 404
        status, photo, headers = _get(srv.url + "img/MIXED")  # the first readable photo
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and photo[:2] == b"\xff\xd8"
        assert _get(srv.url + "img/" + "x" * 200)[0] == 404
        assert _get(srv.url + "healthz")[0] == 200  # the server is unharmed
    finally:
        srv.stop()


def test_a_client_that_never_reads_does_not_hold_up_the_others(parts: dict[str, Any]) -> None:
    """A stuck page's queue stays bounded (oldest dropped), the others get every event, and stop() returns."""
    import socket
    import time

    from edge.kiosk.server import CLIENT_QUEUE

    srv = KioskServer(host="127.0.0.1", port=0, hub=parts["hub"], actions=parts["actions"], cards=parts["cards"],
                      page=_page())
    srv.start()
    stuck = socket.create_connection(("127.0.0.1", srv.port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
    try:
        with urllib.request.urlopen(srv.url + "events", timeout=10) as stream:
            lines = iter(stream)
            assert _next_event(lines)["type"] == "hello"
            deadline = time.monotonic() + 10
            while srv.clients < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert srv.clients == 2
            pad = "x" * 4000  # 4 kB an event: the stuck socket's buffers fill after a few hundred
            n = 3000
            for i in range(n):
                srv.broadcast({"type": "test", "i": i, "pad": pad})
            got: list[int] = []
            while not got or got[-1] != n - 1:  # a reading page gets the newest event (it may skip some)
                ev = _next_event(lines)
                if ev["type"] == "test":
                    got.append(ev["i"])
            assert got == sorted(got)
            assert _get(srv.url + "healthz")[0] == 200
            assert all(q.qsize() <= CLIENT_QUEUE for q in list(srv._clients))  # the stuck one is bounded
    finally:
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 10  # not held up by the stuck page
        stuck.close()


def test_recommendations_never_show_a_sku_the_catalog_does_not_hold(tmp_path: Path, parts: dict[str, Any]) -> None:
    """Basket events may name skus that are not products here (issue 29 item 6): no placeholder tile for them."""
    from edge.core.config import RecommendSettings
    from edge.recommend.service import open_recommender

    rec = open_recommender(RecommendSettings(), data_dir=tmp_path)
    for i, basket in enumerate([["COLA", "TOMATO"], ["COLA", "TOMATO"], ["COLA", "TOMATO", "OATS"], ["TOMATO"]]):
        rec.handle_basket_message(json.dumps({"id": i, "skus": basket}))
    actions = KioskActions(hub=parts["hub"], cards=parts["cards"], confirmations=parts["store"],
                           publish=lambda t, m: None, device="d1", recommender=rec)
    assert [c["sku"] for c in actions.recommendations("COLA")["together"]] == ["OATS"]
    assert [c["sku"] for c in actions.recommendations("OATS")["together"]] == ["COLA"]
    assert parts["cards"].card("TOMATO") is None


def test_a_known_answer_carries_its_pick_list_and_names_its_item(parts: dict[str, Any]) -> None:
    """Issue 27 item 3: the ranked alternatives come with a known answer too; the event names the item
    (the runtime's item_id, else the view) so the page replaces the answer of the same item."""
    hub: KioskHub = parts["hub"]
    first = hub.on_match({**match("known", ["COLA", "OATS", "TEA"]), "item_id": "it-1"}, view_id="v1")
    again = hub.on_match({**match("known", ["OATS", "COLA", "TEA"]), "item_id": "it-1"}, view_id="v2")
    assert first is not None and again is not None and first["item"] == again["item"] == "it-1"
    assert [c["sku"] for c in first["candidates"]] == ["OATS", "TEA"] and first["candidates"][0]["score"] == 0.8
    assert again["product"]["sku"] == "OATS" and [c["sku"] for c in again["candidates"]] == ["COLA", "TEA"]
    no_items = hub.on_match(match("known", ["TEA"]), view_id="v3")  # a runtime without item ids: the view
    assert no_items is not None and no_items["item"] == "v3" and no_items["candidates"] == []
    gone = hub.on_match(match("known", ["GONE", "TEA", "COLA"]), view_id="v4")  # its product left the catalog
    assert gone is not None and gone["kind"] == "unknown" and [c["sku"] for c in gone["candidates"]] == ["TEA", "COLA"]


def test_a_confirmation_sticks_to_the_item_and_says_whether_the_screen_shows_it(parts: dict[str, Any]) -> None:
    hub: KioskHub = parts["hub"]
    actions: KioskActions = parts["actions"]
    m = {**match("known", ["COLA", "OATS"]), "item_id": "it-7"}
    hub.on_match(m, view_id="v1")
    status, reply = actions.handle("confirm", json.dumps({"match_id": m["id"], "sku": "OATS"}).encode())
    assert status == 200 and reply["result"]["shown"] is True and reply["result"]["item_id"] == "it-7"
    ((_, msg),) = parts["sent"]
    assert msg["item_id"] == "it-7" and msg["catalog_version"] == 7 == m["catalog_version"]  # the match's type
    turned = hub.on_match({**match("known", ["COLA", "OATS"]), "item_id": "it-7"}, view_id="v2")  # another view
    assert turned is not None and turned["confirmed"] and turned["product"]["sku"] == "OATS"
    assert turned["candidates"] == []  # confirmed: no pick list
    old = match("unknown", ["TEA"])
    hub.on_match(old, view_id="v5")
    hub.on_match(match("known", ["COLA"]), view_id="v6")
    status, reply = actions.handle("confirm", json.dumps({"match_id": old["id"], "sku": "TEA"}).encode())
    assert status == 200 and reply["result"]["shown"] is False  # counted; the page thanks the shopper itself


def test_the_page_title_is_friendly_when_none_is_set(tmp_path: Path, catalog: Catalog) -> None:
    from edge.core.config import load_settings
    from edge.kiosk.screen import create_screen

    for language, title in (("en", "Price check"), ("sv", "Priskoll")):
        s = load_settings(None, device={"store": "store-001", "id": "d1"}, catalog={"data_dir": str(tmp_path)},
                          cameras=[{"name": "cam", "source": "0", "mode": "kiosk"}],
                          kiosk_screen={"enabled": True, "language": language})
        screen = create_screen(s, catalog=catalog, publish=lambda t, m: None)
        assert screen.server.page.title == title
        screen.confirmations.close()
