"""What serving Prometheus metrics costs the frame loop: loop fps with ``[metrics]`` on vs off, same run.

The runtime (embedded default image encoder, a USearch i8 index of the demo products plus
distractors, ``--cameras`` looping virtual cameras at ``--fps``, gate off so every frame is
embedded and every stage hook fires) runs ``--rounds`` times per condition, alternating
off/on/on/off... so drift in a shared machine's load hits both alike. While metrics are on, a
scraper fetches ``/metrics`` every ``--scrape-interval`` seconds, as an aggressive Prometheus
would. Reported: loop fps per round, the median per condition, their ratio (on / off), the
time one scrape takes, the cost of one stage hook, and the machine (with its load average).

    python -m benchmarks.metrics_overhead [--rounds 3] [--seconds 10] [--json benchmarks/results/metrics-overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import timeit
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._broker import free_port
from benchmarks.e2e import IndexMatcher, LoopingCamera, clip, machine


def scraper(url: str, interval: float, stop: threading.Event, times_ms: list[float]) -> None:
    while not stop.wait(interval):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
        times_ms.append((time.perf_counter() - t) * 1000)


def one_round(*, metrics: bool, args: argparse.Namespace, encoder: Any, matcher: IndexMatcher, work: Path,
              scrape_ms: list[float]) -> float:
    """Loop fps (frames processed per second, all cameras) over ``args.seconds`` after a warm-up."""
    from edge.core.config import load_settings
    from edge.pipeline.capture import FrameSource
    from edge.pipeline.factory import assemble_runtime

    port = free_port()
    settings = load_settings(
        None, device={"store": "bench", "id": "metrics"}, catalog={"data_dir": str(work)},
        cameras=[{"name": f"cam{i}", "source": "virtual", "fps": args.fps} for i in range(args.cameras)],
        gate={"enabled": False}, decision={"window": 5, "min_frames": 2, "heartbeat_s": 3600},
        mqtt={"enabled": False}, ocr={"enabled": False}, metrics={"enabled": metrics, "port": port})
    clips = {i: clip(args.hold, i) for i in range(args.cameras)}

    def looping(i: int) -> Callable[[], FrameSource]:
        return lambda: LoopingCamera(clips[i])

    with open(os.devnull, "w") as devnull:
        rt = assemble_runtime(settings=settings, encoder=encoder, matcher=matcher, out=devnull,
                              sources={f"cam{i}": looping(i) for i in range(args.cameras)})
        rt.start()
        stop, scrape_stop = threading.Event(), threading.Event()
        loop = threading.Thread(target=rt.run, args=(stop,))
        loop.start()
        scrape = threading.Thread(target=scraper, args=(f"http://127.0.0.1:{port}/metrics", args.scrape_interval,
                                                        scrape_stop, scrape_ms))
        if metrics:
            scrape.start()
        time.sleep(args.warmup)
        f0, t0 = rt.counts["frames"], time.monotonic()
        time.sleep(args.seconds)
        fps = (rt.counts["frames"] - f0) / (time.monotonic() - t0)
        scrape_stop.set()
        stop.set()
        loop.join()
        if metrics:
            scrape.join()
        rt.shutdown()
    return round(fps, 2)


def hook_cost_us() -> dict[str, float]:
    """Microseconds per stage hook call: the histogram timer with metrics on, the no-op context without."""
    from edge.ops.hooks import RuntimeHooks
    from edge.ops.metrics import RuntimeMetrics

    def per_call(hooks: RuntimeHooks) -> float:
        def body() -> None:
            with hooks.stage("embed"):
                pass

        n = 200_000
        return round(min(timeit.repeat(body, number=n, repeat=3)) / n * 1e6, 3)

    return {"stage_hook_on_us": per_call(RuntimeHooks(metrics=RuntimeMetrics(["cam"]))),
            "stage_hook_off_us": per_call(RuntimeHooks())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=2, help="virtual cameras (default 2)")
    ap.add_argument("--fps", type=float, default=120.0, help="frame cap per camera (default 120: CPU-bound loop)")
    ap.add_argument("--hold", type=int, default=8, help="frames each product is held in front of a camera")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per condition, alternating (default 3)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring each round")
    ap.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes (default 1)")
    ap.add_argument("--index-size", type=int, default=20_000, help="vectors in the index (distractors added)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    from edge.core.config import ModelSettings
    from edge.models.encoders import load_image_encoder
    from edge.pipeline.demo import DEMO_PRODUCTS, reference_images

    encoder = load_image_encoder(ModelSettings())
    vecs = {p.sku: encoder.embed(reference_images(p)) for p in DEMO_PRODUCTS}
    matcher = IndexMatcher(vecs, distractors=max(0, args.index_size - sum(len(v) for v in vecs.values())))
    fps: dict[str, list[float]] = {"off": [], "on": []}
    scrape_ms: list[float] = []
    order = [("off", "on") if r % 2 == 0 else ("on", "off") for r in range(args.rounds)]
    with tempfile.TemporaryDirectory(prefix="storelens-metrics-") as tmp:
        for r, pair in enumerate(order):
            for cond in pair:
                fps[cond].append(one_round(metrics=cond == "on", args=args, encoder=encoder, matcher=matcher,
                                           work=Path(tmp) / f"{r}-{cond}", scrape_ms=scrape_ms))
                print(f"round {r + 1} metrics {cond:3s}: {fps[cond][-1]:.1f} fps", flush=True)
    med = {k: statistics.median(v) for k, v in fps.items()}
    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
              "fps_off": fps["off"], "fps_on": fps["on"], "median_fps_off": med["off"], "median_fps_on": med["on"],
              "ratio_on_over_off": round(med["on"] / med["off"], 4) if med["off"] else None,
              "scrapes": len(scrape_ms), "scrape_ms_median": round(statistics.median(scrape_ms), 2) if scrape_ms
              else None, **hook_cost_us()}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
