"""The kiosk page on a LAN (issue 28, finding 9): its own token, Host and Origin checks, connection caps.

Real aiohttp servers on free ports, raw sockets for half-open connections, real Chromium for the
token leaving the address bar. The metrics endpoint's server gets the same caps.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks._broker import free_port
from edge.kiosk.labels import labels_for
from edge.kiosk.server import KioskServer, PageConfig
from tests.test_kiosk import catalog, parts  # noqa: F401 (fixtures)

TOKEN = "kiosk-secret-0123456789"
ADMIN = "admin-secret-0123456789"
PAGE = PageConfig(language="en", locale="en-GB", labels=labels_for("en"), currency="SEK", device="d1", title="t")


@pytest.fixture
def serve(parts: dict[str, Any]) -> Iterator[Any]:  # noqa: F811
    started: list[KioskServer] = []

    def start(**kw: Any) -> KioskServer:
        srv = KioskServer(host=kw.pop("host", "127.0.0.1"), port=free_port(), hub=parts["hub"],
                          actions=parts["actions"], cards=parts["cards"], page=PAGE, **kw)
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def request(url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
            ) -> tuple[int, bytes, Any]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def test_the_page_has_its_own_token_kept_in_an_httponly_cookie(serve: Any) -> None:
    srv = serve(token=TOKEN)
    base = f"http://127.0.0.1:{srv.port}"
    assert request(base + "/")[0] == 401
    assert request(base + f"/?token={ADMIN}")[0] == 401
    assert request(base + "/api/search", body=b'{"q": "oats"}')[0] == 401
    assert request(base + "/events")[0] == 401 and request(base + "/img/COLA")[0] == 401
    assert request(base + "/healthz")[0] == 200 and request(base + "/static/kiosk.js")[0] == 200
    status, _, headers = request(base + f"/?token={TOKEN}")
    cookie = headers["Set-Cookie"]
    assert status == 200 and "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    status, body, _ = request(base + "/api/search", body=b'{"q": "oats"}', headers=jar)
    assert status == 200 and json.loads(body)["result"]["results"][0]["sku"] == "OATS"
    assert request(base + "/img/COLA", headers=jar)[0] == 200
    assert request(base + "/api/search", body=b'{"q": "oats"}', headers={"X-StoreLens-Token": TOKEN})[0] == 200
    assert request(base + "/api/search", body=b'{"q": "oats"}', headers={"X-StoreLens-Token": "guess"})[0] == 401
    assert request(base + "/api/search", body=b'{"q": "oats"}', headers={"Cookie": "storelens_kiosk=x"})[0] == 401


def test_the_admin_command_token_does_not_open_the_page(tmp_path: Path, catalog: Any) -> None:  # noqa: F811
    from edge.core.config import SettingsError, load_settings
    from edge.kiosk.screen import create_screen

    def settings(**ks: Any) -> Any:
        return load_settings(None, device={"store": "s1", "id": "d1"}, catalog={"data_dir": str(tmp_path)},
                             cameras=[{"name": "cam", "source": "0", "mode": "kiosk"}],
                             mqtt={"command_token": ADMIN}, kiosk_screen={"enabled": True, "port": free_port(), **ks})

    screen = create_screen(settings(token=TOKEN), catalog=catalog, publish=lambda t, m: None)
    screen.start()
    try:
        assert request(screen.url + f"?token={ADMIN}")[0] == 401
        assert request(screen.url + f"?token={TOKEN}")[0] == 200
        assert screen.actions.router.token is None  # the page never needs (or gets) the admin token
    finally:
        screen.stop()
    with pytest.raises(SettingsError, match=r"kiosk_screen\.token"):  # off loopback without a token: refused
        settings(host="0.0.0.0")


def test_off_loopback_only_allowed_host_names_and_same_origin_posts(serve: Any) -> None:
    srv = serve(host="0.0.0.0", token=TOKEN, allowed_hosts=("kiosk-1.store.lan",))
    url = f"http://127.0.0.1:{srv.port}"
    auth = {"X-StoreLens-Token": TOKEN}
    for host, status in (("evil.example", 403), (f"evil.example:{srv.port}", 403), ("127.0.0.1", 200),
                         (f"192.168.1.20:{srv.port}", 200), ("kiosk-1.store.lan", 200), ("[::1]", 200)):
        assert request(url + "/healthz", headers={"Host": host})[0] == status, host
    # DNS rebinding: the attacker's name in Host and Origin alike
    rebind = {"Host": "evil.example", "Origin": "http://evil.example", **auth}
    assert request(url + "/api/search", body=b'{"q": "oats"}', headers=rebind)[0] == 403
    cross = {"Host": "kiosk-1.store.lan", "Origin": "http://evil.example", **auth}
    assert request(url + "/api/search", body=b'{"q": "oats"}', headers=cross)[0] == 403
    site = {"Host": "kiosk-1.store.lan", "Sec-Fetch-Site": "cross-site", **auth}
    assert request(url + "/api/search", body=b'{"q": "oats"}', headers=site)[0] == 403
    same = {"Host": "kiosk-1.store.lan", "Origin": "http://kiosk-1.store.lan", **auth}
    assert request(url + "/api/search", body=b'{"q": "oats"}', headers=same)[0] == 200


def closed_by_peer(s: socket.socket, timeout: float = 5.0) -> bool:
    """True when the server closed ``s`` within ``timeout`` (recv sees EOF or a reset)."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_connections_live_pages_and_header_time_are_capped(serve: Any) -> None:
    srv = serve(max_connections=4, max_event_clients=1, header_timeout_s=0.5)
    port = srv.port
    half_open = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    half_open[0].sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers begun, never finished
    extra = socket.create_connection(("127.0.0.1", port))
    assert closed_by_peer(extra)  # over the cap: closed at once
    assert all(closed_by_peer(s) for s in half_open)  # no headers within header_timeout_s: closed
    assert srv.guard_stats()["refused"] >= 1 and srv.guard_stats()["timed_out"] == 4
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/events", timeout=5) as stream:
        assert next(iter(stream)) == b"retry: 1000\n"
        assert request(f"http://127.0.0.1:{port}/events")[0] == 503  # one live page at most
        assert request(f"http://127.0.0.1:{port}/healthz")[0] == 200
    for s in [*half_open, extra]:
        s.close()


def test_metrics_server_caps_connections_and_header_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import prometheus_client

    from edge.ops import metrics

    monkeypatch.setattr(metrics, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(metrics, "HEADER_TIMEOUT_S", 2.0)
    srv = metrics.MetricsServer(prometheus_client.CollectorRegistry(), host="127.0.0.1", port=0)
    port = srv.start()
    try:
        half_open = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        for s in half_open:
            s.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
        extra = socket.create_connection(("127.0.0.1", port))
        assert closed_by_peer(extra, timeout=1.5)  # over the cap: closed on arrival, before any deadline
        assert all(closed_by_peer(s) for s in half_open)  # slowloris: closed at the header deadline
        assert srv.guard_stats() == {"refused": 1, "timed_out": 2}
        assert request(f"http://127.0.0.1:{port}/metrics")[0] == 200
        for s in [*half_open, extra]:
            s.close()
    finally:
        srv.stop()


@pytest.mark.slow
def test_a_real_browser_drops_the_token_from_its_address_and_keeps_working(serve: Any) -> None:
    """Real Chromium: opened as /?token=..., the page's address no longer holds it, and the page's stream,
    search and images work on the HttpOnly cookie alone (the page's script cannot read it)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from benchmarks._kiosk import chromium_path, launch_chromium, wait_live

    if chromium_path() is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    srv = serve(token=TOKEN)
    with sync_api.sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{srv.port}/?token={TOKEN}")
            wait_live(page, timeout_s=10)
            assert page.evaluate("location.href") == f"http://127.0.0.1:{srv.port}/"
            assert TOKEN not in page.evaluate("document.cookie + JSON.stringify(sessionStorage)")
            page.fill("#q", "oats")
            page.press("#q", "Enter")
            page.wait_for_selector('#r-cards .card[data-sku="OATS"]', timeout=10_000)
            page.reload()  # a reload (or the next boot's first load) has no token in the address: the cookie does
            wait_live(page, timeout_s=10)
        finally:
            browser.close()
