"""The staff shelf page, ``/shelf``, on the runtime's web server (the kiosk screen's aiohttp server).

Routes (added to :class:`~edge.kiosk.server.KioskServer` by :func:`attach_page`; the server's own
guard still applies: Host allow-list on loopback, same-origin POSTs, security headers):

- ``GET /shelf``: the page (``static/shelf.html``); ``GET /shelf/static/*``: its CSS and JS;
- ``GET /shelf/api/state``: each shelf camera's facings with their states, and the open alerts
  (oldest first) with their crop and the planned product;
- ``GET /shelf/frame/<camera>.jpg``: the camera's newest frame with the facings drawn
  (:func:`~edge.shelf.overlay.draw_facings`, the picture ``storelens shelf setup`` shows);
- ``GET /shelf/crop/<id>.jpg``: an alert's snapshot; ``GET /shelf/img/<sku>``: a product's photo;
- ``POST /shelf/api/ack`` ``{"alert_id": ...}``: "done" (published on MQTT and kept in the history).

Its own token (``shelf.token``), separate from the kiosk's, checked by the server's token gate for
``/shelf`` (:class:`edge.kiosk.guard.TokenGate`, issue 28): ``/shelf?token=T`` once sets an HttpOnly
cookie holding a digest of it (the page then drops the token from its address); scripts may send
the ``X-StoreLens-Token`` header. Without a token the page is served only when the server listens
on a loopback address.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from aiohttp import web

from edge.core.config import Settings
from edge.core.errors import ConfigError
from edge.kiosk.guard import TokenGate
from edge.shelf.monitor import ShelfMonitor
from edge.shelf.overlay import draw_facings

STATIC = Path(__file__).with_name("static")
COOKIE = "storelens_shelf"
FRAME_MAX_WIDTH = 960
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ShelfPage:
    """The routes of the staff page over a :class:`~edge.shelf.monitor.ShelfMonitor` (see the module docstring)."""

    def __init__(self, *, settings: Settings, monitor: ShelfMonitor, last_frame: Callable[[str], Any],
                 photo: Callable[[str], bytes | None]) -> None:
        self.settings, self.monitor = settings, monitor
        self._last_frame, self._photo = last_frame, photo
        token = settings.shelf.token
        self.token = token.get_secret_value() if token is not None else None
        if self.token is None and settings.kiosk_screen.host not in LOOPBACK:
            raise ConfigError(f"the /shelf page would be open to anyone on the network "
                              f"(kiosk_screen.host = {settings.kiosk_screen.host!r}) without a staff token",
                              hint="set shelf.token (or STORELENS_SHELF__TOKEN) to a secret of 16+ characters")
        v = hashlib.sha1(b"".join(p.read_bytes() for p in sorted(STATIC.iterdir()))).hexdigest()[:10]
        self._html = (STATIC / "shelf.html").read_text(encoding="utf-8").replace("{{v}}", v) \
            .replace("{{title}}", settings.device.store)
        self._cameras = [c for c in settings.cameras if c.mode == "shelf"]

    def add_routes(self, app: web.Application) -> None:
        """The page's routes (all under ``/shelf``, so its gate guards every one of them)."""
        app.router.add_get("/shelf", self._index)
        app.router.add_get("/shelf/api/state", self._state)
        app.router.add_post("/shelf/api/ack", self._ack)
        app.router.add_get("/shelf/frame/{camera}.jpg", self._frame)
        app.router.add_get("/shelf/crop/{crop_id}.jpg", self._crop)
        app.router.add_get("/shelf/img/{sku}", self._img)
        app.router.add_get("/shelf/static/{name}", self._static)

    # -- handlers ------------------------------------------------------------------------------------

    async def _index(self, _request: web.Request) -> web.Response:
        return web.Response(text=self._html, content_type="text/html", headers={"Cache-Control": "no-cache"})

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ("shelf.js", "shelf.css"):
            raise web.HTTPNotFound()
        kind = "application/javascript" if name.endswith(".js") else "text/css"
        return web.Response(body=(STATIC / name).read_bytes(), content_type=kind,
                            headers={"Cache-Control": "public, max-age=86400"})

    async def _state(self, _request: web.Request) -> web.Response:
        states = self.monitor.states()
        cameras = [{"name": c.name, "facings": [{"name": r.name, "rect": list(r.rect), "expected_sku": r.expected_sku,
                                                  "state": states.get(c.name, {}).get(r.name)} for r in c.rois]}
                   for c in self._cameras]
        alerts = [{"alert_id": a.id, "camera": a.camera, "facing": a.facing, "state": a.state,
                   "expected_sku": a.expected_sku, "observed_sku": a.observed_sku, "since": a.since,
                   "opened": a.opened, "crop_id": a.crop_id} for a in self.monitor.open_alerts()]
        return web.json_response({"now": time.time(), "cameras": cameras, "alerts": alerts},
                                 headers={"Cache-Control": "no-store"})

    async def _ack(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            alert_id = body["alert_id"]
            if not isinstance(alert_id, str) or len(alert_id) > 64:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return web.json_response({"ok": False, "error": 'send {"alert_id": "..."}'}, status=400)
        alert = await asyncio.get_running_loop().run_in_executor(None, self.monitor.ack, alert_id)
        if alert is None:
            return web.json_response({"ok": False, "error": "no open alert with this id (cleared or done already)"},
                                     status=404)
        return web.json_response({"ok": True, "alert_id": alert.id, "acked": alert.acked})

    async def _frame(self, request: web.Request) -> web.Response:
        name = request.match_info["camera"]
        cam = next((c for c in self._cameras if c.name == name), None)
        frame = self._last_frame(name) if cam is not None else None
        if cam is None or frame is None:
            raise web.HTTPNotFound()
        jpg = await asyncio.get_running_loop().run_in_executor(
            None, _overlay_jpeg, frame.image, cam.rois, self.monitor.states().get(name, {}))
        return web.Response(body=jpg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def _crop(self, request: web.Request) -> web.Response:
        data = self.monitor.crops.load(request.match_info["crop_id"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="image/jpeg")

    async def _img(self, request: web.Request) -> web.Response:
        sku = request.match_info["sku"]
        data = await asyncio.get_running_loop().run_in_executor(None, self._photo, sku) if len(sku) <= 128 else None
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="image/jpeg")


def _overlay_jpeg(image: np.ndarray, rois: Any, states: dict[str, str | None]) -> bytes:
    drawn = draw_facings(image, rois, states)
    if drawn.shape[1] > FRAME_MAX_WIDTH:
        h = round(drawn.shape[0] * FRAME_MAX_WIDTH / drawn.shape[1])
        drawn = cv2.resize(drawn, (FRAME_MAX_WIDTH, h), interpolation=cv2.INTER_AREA)
    ok, jpg = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return jpg.tobytes() if ok else b""


def attach_page(rt: Any, monitor: ShelfMonitor) -> ShelfPage | None:
    """The page on the runtime's kiosk-screen server (None when ``kiosk_screen.enabled`` is false), behind a
    token gate of its own on ``/shelf`` (the longest prefix decides, so the kiosk's gate on ``/`` never applies)."""
    if rt.screen is None:
        return None
    server = rt.screen.server
    page = ShelfPage(settings=rt.settings, monitor=monitor, last_frame=rt.last_frame, photo=server.cards.photo)
    server.add_gate("/shelf", TokenGate(page.token, cookie=COOKIE, path="/shelf"))
    server.route_adders.append(page.add_routes)
    return page
