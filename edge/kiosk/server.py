"""The kiosk screen's HTTP server: aiohttp on its own thread and event loop inside the runtime.

Routes (all assets are files of this package; nothing is loaded from outside the device):

- ``GET /``: the page (``static/index.html`` with the language's labels filled in);
- ``GET /static/*``: its CSS and JavaScript; ``GET /img/<sku>``: a product's catalog photo;
- ``GET /events``: server-sent events — a ``hello`` (current state) on every (re)connect, then
  ``decision``, ``recs`` and ``link`` events as they happen, and a comment every
  :data:`KEEPALIVE_S`; the browser's EventSource reconnects by itself (``retry:``);
- ``POST /api/search|recommend|confirm``: JSON in, JSON out, through
  :class:`~edge.kiosk.actions.KioskActions` (the MQTT command validation);
- ``GET /healthz``.

Bound to ``127.0.0.1`` by default; on a loopback address the ``Host`` header must name a
loopback host too (no DNS rebinding), and a POST from another origin is refused. Off loopback
(issue 28, finding 9) the ``Host`` must be a loopback name, an IP address or one of
``kiosk_screen.allowed_hosts``, and the page needs its own token (``kiosk_screen.token``, never
the admin ``mqtt.command_token``): a :class:`~edge.kiosk.guard.TokenGate` guards every route but
``/healthz`` and ``/static/``. Connections are capped (``max_connections``, ``max_event_clients``)
and must send their headers within ``header_timeout_s`` (:class:`~edge.kiosk.guard.ConnectionGuard`).
Another page on this server adds its own gate for its paths with :meth:`KioskServer.add_gate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from edge.core.errors import ConfigError
from edge.kiosk.actions import VERBS, KioskActions
from edge.kiosk.cards import ProductCards
from edge.kiosk.guard import ConnectionGuard, TokenGate, host_allowed
from edge.kiosk.hub import KioskHub

log = logging.getLogger("storelens.kiosk")

STATIC_DIR = Path(__file__).with_name("static")
KEEPALIVE_S = 15.0
RETRY_MS = 1000  # EventSource reconnect delay the page is told to use
LINK_POLL_S = 1.0
CLIENT_QUEUE = 64
PUBLIC_PATHS = ("/healthz", "/static/")  # reachable without a token (no data in them)
KIOSK_COOKIE = "storelens_kiosk"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
}
LinkStatus = Callable[[], str]  # "online" | "offline" | "off" (no broker configured)


@dataclass(frozen=True, slots=True)
class PageConfig:
    """What the page is told in its HTML: language, words, currency, who it is."""

    language: str
    locale: str
    labels: dict[str, str]
    currency: str
    device: str
    title: str
    token_required: bool = False

    def to_json(self) -> str:
        doc = {"language": self.language, "locale": self.locale, "labels": self.labels, "currency": self.currency,
               "device": self.device, "title": self.title, "token_required": self.token_required}
        return json.dumps(doc, ensure_ascii=False).replace("<", "\\u003c")


def asset_version() -> str:
    """A short hash of the static files: the page asks for ``kiosk.js?v=...`` so an update is never stale."""
    h = hashlib.sha1()
    for p in sorted(STATIC_DIR.iterdir()):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:10]


def sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class KioskServer:
    """Serves the page and streams events; ``start()`` / ``stop()`` from the runtime's thread."""

    def __init__(self, *, host: str, port: int, hub: KioskHub, actions: KioskActions, cards: ProductCards,
                 page: PageConfig, link_status: LinkStatus | None = None, token: str | None = None,
                 allowed_hosts: tuple[str, ...] = (), max_connections: int = 64, max_event_clients: int = 8,
                 header_timeout_s: float = 10.0) -> None:
        self.host, self.port = host, port
        self.allowed_hosts = allowed_hosts
        self.max_event_clients = max_event_clients
        self.guard = ConnectionGuard(max_connections=max_connections, header_timeout_s=header_timeout_s)
        self._gates: dict[str, TokenGate] = {}
        self.add_gate("/", TokenGate(token, cookie=KIOSK_COOKIE, path="/"))
        self._listener: asyncio.base_events.Server | None = None
        self.hub, self.actions, self.cards, self.page = hub, actions, cards, page
        self._link_status = link_status or (lambda: "off")
        self.route_adders: list[Callable[[web.Application], None]] = []  # more pages' routes (edge.shelf.page)
        self._link = "off"
        self._clients: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._html = (STATIC_DIR / "index.html").read_text(encoding="utf-8") \
            .replace("{{lang}}", page.language).replace("{{title}}", page.title) \
            .replace("{{v}}", asset_version()).replace("{{config}}", page.to_json())

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def clients(self) -> int:
        return len(self._clients)

    def add_gate(self, prefix: str, gate: TokenGate) -> None:
        """Guard the paths under ``prefix`` with ``gate`` (the longest matching prefix decides; call before
        :meth:`start`). The kiosk page's gate holds ``/``; a staff page adds e.g. ``add_gate("/shelf", ...)``."""
        self._gates[prefix] = gate

    def gate_for(self, path: str) -> TokenGate | None:
        """The gate of ``path``: None for the public paths (``/healthz``, ``/static/``)."""
        if path == PUBLIC_PATHS[0] or path.startswith(PUBLIC_PATHS[1]):
            return None
        best = max((p for p in self._gates if path == p or path.startswith(p.rstrip("/") + "/")), key=len,
                   default=None)
        return None if best is None else self._gates[best]

    # -- lifecycle (runtime thread) ------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        """Bind and serve on a background thread; a port in use is a :class:`ConfigError` naming it."""
        self._thread = threading.Thread(target=self._serve, name="kiosk-screen", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise ConfigError(f"kiosk screen did not start on {self.host}:{self.port} within {timeout_s}s")
        if self._error is not None:
            raise ConfigError(f"kiosk screen cannot listen on {self.host}:{self.port}: {self._error}",
                              hint="set kiosk_screen.port to a free port (or stop what uses it)") from self._error
        log.info("kiosk screen serving", extra={"url": self.url})
        if not self._gates["/"].enabled:
            log.warning("kiosk screen has no token (kiosk_screen.token): any program on this box may use the page "
                        "and confirm products; set one and open the page once as /?token=... (docs/security.md)")

    def stop(self, timeout_s: float = 5.0) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout_s)
        self._thread.join(timeout_s)
        self._loop = None

    # -- feeding (any thread) ------------------------------------------------------------------------

    def broadcast(self, event: dict[str, Any]) -> None:
        """Send an event to every connected page (thread-safe, never blocks the caller)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._fanout, event)

    def background(self, fn: Callable[[], dict[str, Any] | None]) -> None:
        """Run ``fn`` off the caller's thread (e.g. recommendations) and broadcast what it returns."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(self._run_and_broadcast(fn), loop)

    # -- the event loop thread -----------------------------------------------------------------------

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._open())
        except BaseException as e:  # bind errors go back to start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _open(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=self.actions.router.max_bytes + 1024)
        app.router.add_get("/", self._index)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/events", self._events)
        app.router.add_get("/img/{sku}", self._image)
        app.router.add_post("/api/{verb}", self._api)
        app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
        for add_routes in self.route_adders:
            add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        self._listener = await asyncio.get_running_loop().create_server(
            self.guard.factory(server), self.host, self.port, reuse_address=True)
        self.port = int(self._listener.sockets[0].getsockname()[1])  # port 0 (tests): the listener owns its port
        self._watcher = asyncio.get_running_loop().create_task(self._watch_link())

    async def _shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for q in list(self._clients):
            _offer(q, None)
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()
        asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)

    def _fanout(self, event: dict[str, Any]) -> None:
        for q in list(self._clients):
            _offer(q, event)

    async def _run_and_broadcast(self, fn: Callable[[], dict[str, Any] | None]) -> None:
        try:
            event = await asyncio.get_running_loop().run_in_executor(None, fn)
        except Exception:
            log.exception("kiosk background work failed")
            return
        if event is not None:
            self._fanout(event)

    async def _watch_link(self) -> None:
        while True:
            try:
                status = self._link_status()
            except Exception:
                status = "offline"
            if status != self._link:
                self._link = status
                self._fanout({"type": "link", "broker": status})
            await asyncio.sleep(LINK_POLL_S)

    # -- handlers ------------------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        self.guard.request_started(request.transport)
        try:
            refusal = self._refusal(request)
            if refusal is not None:
                return refusal
            gate = self.gate_for(request.path)
            welcomed = gate is not None and gate.brings_token(request)
            if gate is not None and not welcomed and not gate.allows(request):
                return _unauthorised(request, gate)
            resp = await handler(request)
            if not resp.prepared:
                resp.headers.update(SECURITY_HEADERS)
                if request.path.startswith(("/static/", "/img/")):
                    resp.headers["Cache-Control"] = "public, max-age=86400"
                if welcomed and gate is not None:
                    gate.set_cookie(resp)
            return resp
        finally:
            self.guard.request_done(request.transport)

    def _refusal(self, request: web.Request) -> web.Response | None:
        """403 for a Host this server must not answer (DNS rebinding) and a POST from another site."""
        if not host_allowed(request.host, bind_host=self.host, allowed=self.allowed_hosts):
            return web.json_response({"ok": False, "error": "forbidden host"}, status=403)
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if (origin is not None and origin not in (f"http://{request.host}", f"https://{request.host}")) or \
                    request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
                return web.json_response({"ok": False, "error": "cross-origin request refused"}, status=403)
        return None

    async def _index(self, _request: web.Request) -> web.Response:
        return web.Response(text=self._html, content_type="text/html", headers={"Cache-Control": "no-cache"})

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "clients": self.clients, "broker": self._link})

    def guard_stats(self) -> dict[str, int]:
        """Open connections and those the caps closed (for status and tests)."""
        return {"open": self.guard.open, "refused": self.guard.refused, "timed_out": self.guard.timed_out}

    async def _image(self, request: web.Request) -> web.Response:
        sku = request.match_info["sku"]
        if len(sku) > 128:
            raise web.HTTPNotFound()
        data = await asyncio.get_running_loop().run_in_executor(None, self.cards.photo, sku)
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="image/jpeg")

    async def _api(self, request: web.Request) -> web.Response:
        verb = request.match_info["verb"]
        if verb not in VERBS:  # enroll, remove, reload ... do not exist here
            return web.json_response({"ok": False, "error": f"no such action; the page may use {list(VERBS)}"},
                                     status=404)
        size, body = request.content_length or 0, b""
        if size <= self.actions.router.max_bytes:
            try:  # a body trickled in byte by byte is cut off like slow headers
                body = await asyncio.wait_for(request.read(), self.guard.header_timeout_s)
            except web.HTTPRequestEntityTooLarge:
                size = self.actions.router.max_bytes + 1
            except TimeoutError:
                return web.json_response({"ok": False, "error": "request body too slow"}, status=408)
        if size > self.actions.router.max_bytes:
            status, reply = self.actions.too_large(size)
            return web.json_response(reply, status=status)
        status, reply = await asyncio.get_running_loop().run_in_executor(None, self.actions.handle, verb, body)
        return web.json_response(reply, status=status, dumps=lambda o: json.dumps(o, default=str))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= self.max_event_clients:  # the page reopens its stream after a pause
            return web.json_response({"ok": False, "error": f"{self.max_event_clients} live pages already open"},
                                     status=503, headers={"Retry-After": "2"})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no", **SECURITY_HEADERS})
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(CLIENT_QUEUE)
        self._clients.add(q)
        try:
            await resp.prepare(request)  # inside the try: a page reloaded this instant is gone already
            await resp.write(f"retry: {RETRY_MS}\n\n".encode())
            await resp.write(sse({"type": "hello", "state": self.hub.current, "broker": self._link}))
            while True:
                try:
                    event = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if event is None:
                    break
                await resp.write(sse(event))
        except ConnectionResetError:  # the page went away; a shutdown's cancellation propagates
            pass
        finally:
            self._clients.discard(q)
        return resp


def _offer(q: asyncio.Queue[dict[str, Any] | None], event: dict[str, Any] | None) -> None:
    """Queue without blocking; a slow page loses its oldest event (only the newest state matters)."""
    if q.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            q.get_nowait()
    q.put_nowait(event)


def _unauthorised(request: web.Request, gate: TokenGate) -> web.Response:
    """401: the page says how to open it; the API and the stream answer JSON."""
    if request.method == "GET" and request.path == gate.path:
        return web.Response(status=401, content_type="text/plain", headers=SECURITY_HEADERS,
                            text=f"This page needs its token: open it once as {gate.path}?token=<its token> "
                                 "(the token is then kept in a cookie and removed from the address).\n")
    return web.json_response({"ok": False, "error": "unauthorised: open the page with its token first"},
                             status=401, headers=SECURITY_HEADERS)

