"""A real kiosk rig for the kiosk-screen tests and benchmark: catalog, virtual tray camera, runtime, Chromium.

- :func:`build_catalog`: the demo's rendered products (with prices and shelf locations) and the
  empty tray (as ``decision.empty_sku``) enrolled into a real catalog store with the embedded
  image encoder; thresholds measured on fresh renders like ``storelens demo`` does.
- :class:`TrayCamera`: a virtual kiosk camera that plays whatever is put on the tray (a catalog
  render, an item the catalog does not know, or nothing), with sensor noise on every frame.
- :class:`KioskRig`: the real runtime (gate, embed, vote, outbox, MQTT, kiosk screen) on a thread.
- :func:`launch_chromium`: Debian's ``chromium`` driven by Playwright (``executable_path``; no download).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.config import Settings, load_settings
from edge.pipeline.demo import (
    DEMO_PRODUCTS,
    DemoProduct,
    light_and_noise,
    place,
    reference_images,
    render_product,
    tray_background,
)

EMPTY_SKU = "EMPTY"
PRICES = {"DEMO-COLA": 14.9, "DEMO-OATS": 32.5, "DEMO-MINT": 29.0, "DEMO-BERRY": 18.95, "DEMO-SOAP": 24.0,
          "DEMO-CHOC": 27.5}
LOCATIONS = {"DEMO-COLA": "Aisle 3 · Drinks", "DEMO-OATS": "Aisle 5 · Breakfast", "DEMO-MINT": "Aisle 4 · Tea",
             "DEMO-BERRY": "Aisle 1 · Dairy", "DEMO-SOAP": "Aisle 9 · Household", "DEMO-CHOC": "Aisle 6 · Sweets"}
MYSTERY = DemoProduct("NOT-ENROLLED", "Lime Crisps", (40, 220, 180), "cross")  # not in the catalog
BASKETS = [["DEMO-COLA", "DEMO-CHOC"], ["DEMO-COLA", "DEMO-CHOC", "DEMO-OATS"], ["DEMO-COLA", "DEMO-BERRY"],
           ["DEMO-OATS", "DEMO-BERRY"], ["DEMO-MINT", "DEMO-CHOC"], ["DEMO-COLA", "DEMO-CHOC"]]


def by_sku(sku: str) -> DemoProduct:
    return next(p for p in DEMO_PRODUCTS if p.sku == sku)


def build_catalog(data_dir: Path, encoder: Any) -> tuple[float, float]:
    """Enroll the demo products and the empty tray; returns the (threshold, margin) measured for them.

    Like ``storelens calibrate``, on views the catalog was not built from: the threshold sits midway
    between the worst score a product held over the tray gets for itself and the best score the
    item the catalog does not know (:data:`MYSTERY`) gets; the margin is half the smallest lead.
    """
    from edge.catalog.store import Store

    store = Store(data_dir=data_dir, image_encoder=encoder)
    rng = np.random.default_rng(5)
    for p in DEMO_PRODUCTS:
        store.enroll(p.sku, name=p.name, images=reference_images(p), price=PRICES[p.sku], location=LOCATIONS[p.sku],
                     description=f"{p.name}, {LOCATIONS[p.sku].split(' · ')[-1].lower()}")
    store.enroll(EMPTY_SKU, name="Empty tray", images=[light_and_noise(tray_background(), rng, jitter=0.3)
                                                       for _ in range(3)])
    own, leads, other = [], [], []
    for p in (*DEMO_PRODUCTS, MYSTERY):
        camera = TrayCamera(seed=11)
        for _ in range(6):
            camera.put(p)
            top, second = store.match_vectors(encoder.embed([camera.read()]), 2)[0][:2]
            if p is MYSTERY:
                other.append(top.score)
            else:
                own.append(top.score if top.sku == p.sku else 0.0)
                leads.append(top.score - second.score)
    store.close()
    if min(own) <= max(other) or min(leads) <= 0:
        raise RuntimeError(f"the encoder cannot tell the kiosk rig's items apart (own {min(own):.2f}, "
                           f"unknown {max(other):.2f}, lead {min(leads):.2f})")
    return round((min(own) + max(other)) / 2, 3), round(min(0.1, min(leads) / 2), 3)


def kiosk_settings(data_dir: Path, *, broker_port: int, kiosk_port: int, threshold: float, margin: float,
                   language: str = "en", fps: float = 15.0) -> Settings:
    return load_settings(
        None, device={"store": "corner-market", "id": "kiosk-1"}, catalog={"data_dir": str(data_dir)},
        cameras=[{"name": "cam", "source": "virtual", "fps": fps, "mode": "kiosk", "rois": [{"name": "tray"}]}],
        decision={"window": 5, "min_frames": 3, "agreement": 0.6, "threshold": threshold, "margin": margin,
                  "empty_sku": EMPTY_SKU, "heartbeat_s": 600},
        gate={"steady_frames": 2}, ocr={"enabled": False},
        mqtt={"host": "127.0.0.1", "port": broker_port, "reconnect_min_s": 1, "reconnect_max_s": 2,
              "flush_timeout_s": 2, "stats_interval_s": 1},
        kiosk_screen={"enabled": True, "port": kiosk_port, "language": language, "title": "Corner Market"})


class TrayCamera:
    """A virtual kiosk camera: each frame shows what is on the tray now (``put``), with sensor noise."""

    def __init__(self, seed: int = 3) -> None:
        self._rng = np.random.default_rng(seed)
        self._bg = tray_background()
        self._view = self._bg
        self._lock = threading.Lock()
        self.changed_at = time.time()
        self.frames = 0  # frames read so far (the runtime is reading the camera once this grows)

    def put(self, product: DemoProduct | None) -> None:
        """Place ``product`` on the tray (None: take it away); one pose per placement, like a hand holding still."""
        view = self._bg if product is None else place(self._bg, render_product(product),
                                                      np.random.default_rng(self._rng.integers(1 << 30)))
        with self._lock:
            self._view = view
            self.changed_at = time.time()

    def read(self) -> np.ndarray:
        with self._lock:
            view = self._view
            self.frames += 1
        return light_and_noise(view, self._rng, jitter=0.1)

    def close(self) -> None:
        pass


class KioskRig:
    """The real runtime with the kiosk screen, on a background thread; ``start()`` / ``stop()`` can repeat."""

    def __init__(self, settings: Settings, encoder: Any, camera: TrayCamera) -> None:
        self.settings, self.encoder, self.camera = settings, encoder, camera
        self.rt: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.summary: dict[str, Any] | None = None

    def start(self) -> None:
        from edge.catalog.store import Store
        from edge.pipeline.factory import assemble_runtime
        from edge.recommend.service import open_recommender

        s = self.settings
        store = Store.from_settings(s, image_encoder=self.encoder, text_encoder=None)
        rec = open_recommender(s.recommend, data_dir=s.catalog.data_dir)
        for i, basket in enumerate(BASKETS):
            rec.handle_basket_message(json.dumps({"id": f"b{i}", "skus": basket}))
        rec.reload_products(store)
        self.rt = assemble_runtime(settings=s, encoder=self.encoder, matcher=store,
                                   sources={"cam": lambda: self.camera}, recommender=rec, out=io.StringIO())
        self._stop.clear()
        self.rt.start()
        self._thread = threading.Thread(target=self.rt.run, args=(self._stop,), name="kiosk-rig", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the runtime is really running: the broker acknowledged its command subscriptions
        (when a broker is configured) and it has read fresh frames from the camera since this call."""
        deadline = time.monotonic() + timeout_s
        link = getattr(self.rt, "link", None)
        if link is not None and not link.wait_subscribed(timeout_s):
            raise TimeoutError(f"the runtime's MQTT subscriptions were not acknowledged within {timeout_s}s")
        start = self.camera.frames
        while self.camera.frames < start + 3:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the runtime read {self.camera.frames - start} frames in {timeout_s}s")
            time.sleep(0.02)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.summary = self.rt.shutdown()
        self.rt.matcher.close()
        return self.summary


def chromium_path() -> str | None:
    """Debian's chromium (``apt-get install chromium``); ``CHROMIUM`` overrides."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env
    return shutil.which("chromium") or shutil.which("chromium-browser") or next(
        (p for p in ("/usr/bin/chromium", "/usr/lib/chromium/chromium") if os.path.exists(p)), None)


def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium from the system (never a downloaded build)."""
    path = chromium_path()
    if path is None:
        raise FileNotFoundError("chromium is not installed: apt-get install -y chromium (.ci/run does this)")
    return playwright.chromium.launch(executable_path=path, headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])


def wait_rendered(page: Any, *, after: int, timeout_s: float = 10.0, kind: str | None = None,
                  sku: str | None = None) -> dict[str, Any]:
    """The first page render after the ``after``-th one that matches ``kind`` / ``sku``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rendered = page.evaluate("window.__kiosk ? window.__kiosk.rendered : []")
        for r in rendered[after:]:
            if (kind is None or r["kind"] == kind) and (sku is None or r["sku"] == sku):
                return dict(r)
        page.wait_for_timeout(20)
    tail = page.evaluate("window.__kiosk ? window.__kiosk.rendered : []")[after:]
    raise TimeoutError(f"the page did not show kind={kind} sku={sku} within {timeout_s}s; it showed {tail}")


def wait_js(page: Any, expression: str, *, timeout_s: float, what: str) -> None:
    """Block until the page's JavaScript ``expression`` is truthy, polled over the DevTools protocol.

    Not ``page.wait_for_function``: after a false first check it polls inside the page with ``eval``,
    which the pages' CSP (``script-src 'self'``) refuses."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s}s")
        page.wait_for_timeout(20)


def wait_live(page: Any, *, connects: int = 0, timeout_s: float = 30.0) -> None:
    """Block until the page's event stream is open and said hello more than ``connects`` times (it then
    receives every decision made from now on) and the page shows its 'live' indicator."""
    deadline = time.monotonic() + timeout_s
    wait_js(page, f"window.__kiosk && window.__kiosk.connects > {int(connects)}", timeout_s=timeout_s,
            what="the page's event stream did not connect")
    page.wait_for_selector("#status[data-state='live']", timeout=max(1.0, deadline - time.monotonic()) * 1000)


def rendered_count(page: Any) -> int:
    return int(page.evaluate("window.__kiosk ? window.__kiosk.rendered.length : 0"))


def show(page: Any, camera: TrayCamera, product: DemoProduct | None, *, kind: str, sku: str | None = None,
         timeout_s: float = 30.0) -> dict[str, Any]:
    """Put ``product`` on the tray and wait for the page to show it; the page's current state when it already does."""
    last = page.evaluate("window.__kiosk ? window.__kiosk.last : null")
    if last and last["kind"] == kind and (sku is None or last["sku"] == sku):
        return dict(last)
    before = rendered_count(page)
    camera.put(product)
    return wait_rendered(page, after=before, kind=kind, sku=sku, timeout_s=timeout_s)
