"""Guards for the device's small web server (issue 28, finding 9): a token gate, a Host allow-list,
and caps on connections and on how long a connection may take to send its request headers.

Reusable on purpose: the kiosk page has one :class:`TokenGate` (``kiosk_screen.token``); a second
page on the same server (a staff page, say) makes a second gate with its own token, cookie name
and path, and registers it for its paths (:meth:`edge.kiosk.server.KioskServer.add_gate`).

- :class:`TokenGate`: a browser brings the token once in the address (``/?token=...``); the
  server answers with an HttpOnly, SameSite=Strict cookie holding a digest of it (never the
  token itself) and the page drops the query from its address (``history.replaceState``).
  Programs may send the token in an ``X-StoreLens-Token`` or ``Authorization: Bearer`` header.
  Compared in constant time (:func:`edge.core.auth.token_matches`).
- :func:`host_allowed`: bound to loopback, only loopback names; bound off loopback, loopback
  names, IP addresses and the configured names — a DNS-rebinding page carries its own domain
  name in ``Host``, never an IP address, so it is refused.
- :class:`ConnectionGuard`: at most ``max_connections`` open at once (more are closed on
  arrival), and each must deliver a request's headers within ``header_timeout_s`` of opening or
  of its previous request (half-open "slowloris" connections are closed, never kept).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from edge.core.auth import token_matches

log = logging.getLogger("storelens.kiosk")

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
TOKEN_HEADER = "X-StoreLens-Token"
COOKIE_MAX_AGE_S = 365 * 86400  # the kiosk's own browser keeps it; rotating the token ends it


class TokenGate:
    """Who holds ``token`` may use the routes this gate guards; ``token`` None lets everyone through."""

    def __init__(self, token: str | None, *, cookie: str, path: str = "/") -> None:
        self._token = token
        self.cookie = cookie
        self.path = path
        # the cookie holds a digest bound to its name: stealing it never reveals the token itself
        self._cookie_value = None if token is None else hmac.new(
            token.encode(), f"storelens-cookie:{cookie}".encode(), hashlib.sha256).hexdigest()

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def allows(self, request: web.BaseRequest) -> bool:
        """Whether the request carries the token (header) or the cookie a first load set."""
        if self._token is None or self._cookie_value is None:
            return True
        given = request.headers.get(TOKEN_HEADER)
        auth = request.headers.get("Authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is not None:
            return token_matches(given, self._token)
        cookie = request.cookies.get(self.cookie)
        return cookie is not None and token_matches(cookie, self._cookie_value)

    def brings_token(self, request: web.BaseRequest) -> bool:
        """A load of the gate's page with ``?token=<the token>`` (then :meth:`set_cookie` on the answer)."""
        return (self._token is not None and request.method == "GET" and request.path == self.path
                and token_matches(request.query.get("token"), self._token))

    def set_cookie(self, response: web.StreamResponse) -> None:
        """The HttpOnly, SameSite=Strict cookie that carries the token's digest from now on."""
        if self._cookie_value is not None:
            response.set_cookie(self.cookie, self._cookie_value, httponly=True, samesite="Strict", path=self.path,
                                max_age=COOKIE_MAX_AGE_S)


def hostname(host: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:80`` -> ``[::1]``), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host: str, *, bind_host: str, allowed: Iterable[str] = ()) -> bool:
    """Whether a request naming ``host`` may be served by a server bound to ``bind_host`` (see the module doc)."""
    name = hostname(host)
    if name in LOOPBACK:
        return True
    if bind_host in LOOPBACK:
        return False
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return name in {a.strip().lower() for a in allowed}


class ConnectionGuard:
    """Caps open connections and the time a connection may take to send a request's headers.

    :meth:`factory` wraps the server's protocol factory; the request middleware calls
    :meth:`request_started` when headers have arrived and :meth:`request_done` when the answer left.
    """

    def __init__(self, *, max_connections: int, header_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.refused = 0  # connections closed on arrival: the cap was reached
        self.timed_out = 0  # connections closed: no request headers in time
        self._deadlines: dict[asyncio.BaseTransport, asyncio.TimerHandle | None] = {}

    @property
    def open(self) -> int:
        return len(self._deadlines)

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that guards every protocol ``inner`` makes."""
        return lambda: _Guarded(inner, self)

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        if len(self._deadlines) >= self.max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 100 == 0:
                log.warning("kiosk server: connection refused, too many open", extra={
                    "max_connections": self.max_connections, "refused": self.refused})
            return False
        self._deadlines[transport] = None
        self._arm(transport)
        return True

    def release(self, transport: asyncio.BaseTransport) -> None:
        handle = self._deadlines.pop(transport, None)
        if handle is not None:
            handle.cancel()

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        handle = self._deadlines.get(transport) if transport is not None else None
        if handle is not None:
            handle.cancel()
            self._deadlines[transport] = None  # type: ignore[index]

    def request_done(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None and transport in self._deadlines:
            self._arm(transport)

    def _arm(self, transport: asyncio.BaseTransport) -> None:
        old = self._deadlines.get(transport)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._deadlines[transport] = loop.call_later(self.header_timeout_s, self._expire, transport)

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        if self._deadlines.get(transport) is not None:
            self.timed_out += 1
            if self.timed_out == 1 or self.timed_out % 100 == 0:
                log.warning("kiosk server: connection closed, no request headers in time", extra={
                    "header_timeout_s": self.header_timeout_s, "timed_out": self.timed_out})
            self._deadlines[transport] = None
            transport.abort()  # type: ignore[attr-defined]


class _Guarded(asyncio.Protocol):
    """Passes everything to the server's own protocol, once the guard admitted the connection."""

    def __init__(self, inner: Callable[[], asyncio.Protocol], guard: ConnectionGuard) -> None:
        self._make = inner
        self._inner: asyncio.Protocol | None = None
        self._guard = guard
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(transport):
            transport.abort()  # type: ignore[attr-defined]
            return
        self._transport = transport
        self._inner = self._make()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.release(self._transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def __getattr__(self, name: str) -> Any:  # anything else asyncio or aiohttp asks the protocol for
        inner = self.__dict__.get("_inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)
