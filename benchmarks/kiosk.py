"""Kiosk screen figures in a real headless Chromium against a real runtime and a real Mosquitto.

* **decision -> page**: for each of ``--decisions`` decisions (a catalog render put on the tray,
  then the empty tray, in turn), the time from the decision reaching the kiosk screen in the
  runtime (``emitted_ms``, right after the match message went to the outbox) to the page's next
  animation frame with it rendered (``requestAnimationFrame`` after the DOM update); p50 / p95 / max.
  Both clocks are this machine's wall clock. Also **tray -> page**: from putting the product on
  the virtual tray to the page showing it (camera fps, gate, embedding and voting included).
* **page weight**: bytes transferred on a first load with an empty cache (HTML, CSS, JS, from
  the Resource Timing API), before and after the first product (its photo and the
  recommendations' photos); the event stream itself is not counted (it never completes).

    python -m benchmarks.kiosk [--decisions 50] [--fps 15] [--json benchmarks/results/kiosk.json]
        [--screenshots DIR]    # also kiosk-portrait.png, kiosk-landscape.png and their -unknown views (demo
                               # products; the README's come from tests/test_kiosk_e2e.py, real photos)
        [--language sv]        # the Swedish page (screenshots get a -sv suffix)

With ``--root DIR --gallery FILE --queries FILE`` it measures kiosk *decision accuracy* instead
(labelled photos held up through gate -> embed -> vote; :mod:`benchmarks.kiosk_sessions`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._broker import Broker, free_port
from benchmarks._kiosk import (
    DEMO_PRODUCTS,
    MYSTERY,
    KioskRig,
    TrayCamera,
    build_catalog,
    by_sku,
    kiosk_settings,
    launch_chromium,
    rendered_count,
    show,
    wait_rendered,
)

WEIGHT_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource');
  const kinds = {};
  for (const r of res) {
    const k = r.name.includes('/img/') ? 'images' : r.name.split('?')[0].split('.').pop();
    kinds[k] = (kinds[k] || 0) + r.transferSize;
  }
  return {document: nav.transferSize, resources: res.length, by_kind: kinds,
          total: nav.transferSize + res.reduce((a, r) => a + r.transferSize, 0)};
}"""


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1)


def measure_latency(rig: dict[str, Any], n: int) -> dict[str, Any]:
    page, camera = rig["page"], rig["camera"]
    if rendered_count(page) == 0:
        wait_rendered(page, after=0, timeout_s=30)  # the first state after the page connected
    page_ms: list[float] = []
    tray_ms: list[float] = []
    for i in range(n):
        product = DEMO_PRODUCTS[(i // 2) % len(DEMO_PRODUCTS)] if i % 2 == 0 else None
        before = rendered_count(page)
        camera.put(product)
        put_ms = camera.changed_at * 1000
        r = wait_rendered(page, after=before, kind="known" if product else "empty",
                          sku=product.sku if product else None, timeout_s=30)
        page_ms.append(r["shown_ms"] - r["emitted_ms"])
        tray_ms.append(r["shown_ms"] - put_ms)
    return {"decisions": n,
            "decision_to_page_ms": {"p50": percentile(page_ms, 0.5), "p95": percentile(page_ms, 0.95),
                                    "max": round(max(page_ms), 1), "mean": round(statistics.fmean(page_ms), 1)},
            "tray_to_page_ms": {"p50": percentile(tray_ms, 0.5), "p95": percentile(tray_ms, 0.95)}}


def measure_weight(browser: Any, url: str, camera: TrayCamera) -> dict[str, Any]:
    ctx = browser.new_context(viewport={"width": 1080, "height": 1920})  # fresh context: empty cache
    page = ctx.new_page()
    camera.put(None)
    time.sleep(1.0)
    page.goto(url, wait_until="load")
    wait_rendered(page, after=0, kind="empty", timeout_s=30)
    page.wait_for_timeout(300)
    shell = page.evaluate(WEIGHT_JS)
    before = rendered_count(page)
    camera.put(by_sku("DEMO-COLA"))
    wait_rendered(page, after=before, kind="known", sku="DEMO-COLA", timeout_s=30)
    page.wait_for_selector("#recs-together .card img", timeout=15_000)
    page.wait_for_load_state("networkidle")
    with_product = page.evaluate(WEIGHT_JS)
    ctx.close()
    kb = lambda b: round(b / 1024, 1)  # noqa: E731
    return {"first_load_kb": kb(shell["total"]), "first_load_parts_bytes": {"html": shell["document"],
                                                                            **shell["by_kind"]},
            "with_first_product_kb": kb(with_product["total"]), "requests_with_product": with_product["resources"]}


def screenshots(browser: Any, rig: dict[str, Any], folder: Path, suffix: str = "") -> list[str]:
    """Portrait and landscape screenshots of a recognised product (and the unknown view, and Swedish)."""
    url, camera = rig["url"], rig["camera"]
    out = []
    for name, size in (("portrait", (1080, 1920)), ("landscape", (1920, 1080))):
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        page.goto(url)
        wait_rendered(page, after=0, timeout_s=30)
        show(page, camera, None, kind="empty")
        show(page, camera, by_sku("DEMO-COLA"), kind="known", sku="DEMO-COLA")
        page.wait_for_selector("#recs-together .card img", timeout=15_000)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(400)
        out.append(str(folder / f"kiosk-{name}{suffix}.png"))
        page.screenshot(path=out[-1])
        show(page, camera, None, kind="empty")
        show(page, camera, MYSTERY, kind="unknown")
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(400)
        out.append(str(folder / f"kiosk-{name}-unknown{suffix}.png"))
        page.screenshot(path=out[-1])
        show(page, camera, None, kind="empty")
        page.close()
    return out


def main(argv: list[str] | None = None) -> int:
    if any(a == "--root" or a.startswith("--root=") for a in (sys.argv[1:] if argv is None else argv)):
        from benchmarks.kiosk_sessions import main as sessions  # kiosk decision accuracy (issue 18)

        return sessions(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=50)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--language", default="en", choices=("en", "sv"))
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--screenshots", type=Path, help="write PNG screenshots into this folder")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from edge.core.config import load_settings
    from edge.models.encoders import load_image_encoder

    with tempfile.TemporaryDirectory(prefix="storelens-kiosk-") as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Broker(port=free_port(), workdir=work / "broker")
        broker.start()
        encoder = load_image_encoder(load_settings(None, device={"store": "s", "id": "d"}).model)
        threshold, margin = build_catalog(work / "data", encoder)
        settings = kiosk_settings(work / "data", broker_port=broker.port, kiosk_port=free_port(),
                                  threshold=threshold, margin=margin, language=args.language, fps=args.fps)
        camera = TrayCamera()
        kiosk = KioskRig(settings, encoder, camera)
        kiosk.start()
        pw = sync_playwright().start()
        browser = launch_chromium(pw)
        try:
            url = kiosk.rt.screen.url
            page = browser.new_page(viewport={"width": 1080, "height": 1920})
            page.goto(url)
            rig = {"page": page, "camera": camera, "url": url}
            result: dict[str, Any] = {"benchmark": "kiosk", "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                                      "machine": {"python": platform.python_version(), "cpus": _cpus(),
                                                  "chromium": browser.version},
                                      "fps": args.fps, **measure_latency(rig, args.decisions)}
            page.close()
            result["page_weight"] = measure_weight(browser, url, camera)
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                suffix = "" if args.language == "en" else f"-{args.language}"
                result["screenshots"] = screenshots(browser, rig, args.screenshots, suffix)
        finally:
            browser.close()
            pw.stop()
            kiosk.stop()
            broker.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    raise SystemExit(main())
