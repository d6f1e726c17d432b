"""What serving Prometheus metrics costs the frame loop: loop fps with ``[metrics]`` on vs off, same run.

The runtime (embedded default image encoder, exact search over the demo products plus random
distractors, ``--cameras`` looping virtual cameras at ``--fps``, gate off so every frame is
embedded and every stage hook fires) runs ``--rounds`` times per condition, alternating
off/on/on/off... so drift in a shared machine's load hits both alike. While metrics are on, a
scraper fetches ``/metrics`` every ``--scrape-interval`` seconds, as an aggressive Prometheus
would. Reported: loop fps per round, the median per condition, their ratio (on / off); the
process CPU time per processed frame (steadier than fps on a shared, loaded machine); the time
one scrape takes; the cost of one stage hook; the machine (with its load average).

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

import numpy as np

from benchmarks._broker import free_port


class LoopingClip:
    """A virtual kiosk camera playing pre-rendered demo frames forever (a read costs a copy)."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = frames
        self.i = 0

    @staticmethod
    def render(seed: int) -> list[np.ndarray]:
        from edge.pipeline.demo import DEMO_PRODUCTS, VirtualCamera

        cam = VirtualCamera(DEMO_PRODUCTS, hold=8, gap=4, seed=seed)
        frames = []
        while (f := cam.read()) is not None:
            frames.append(f)
        return frames

    def read(self) -> np.ndarray | None:
        self.i += 1
        return self.frames[self.i % len(self.frames)].copy()

    def close(self) -> None:
        pass


class BruteForceMatcher:
    """Exact cosine search over the demo products' reference embeddings plus random distractors."""

    def __init__(self, vecs: dict[str, np.ndarray], distractors: int, seed: int = 0) -> None:
        dim = next(iter(vecs.values())).shape[1]
        noise = np.random.default_rng(seed).standard_normal((distractors, dim)).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        self.skus = [s for s, v in vecs.items() for _ in range(len(v))] + [f"D{i}" for i in range(distractors)]
        self.matrix = np.concatenate([*vecs.values(), noise]).astype(np.float32)

    @property
    def catalog_version(self) -> int:
        return 1

    def reload(self) -> bool:
        return False

    def match_vectors(self, embs: np.ndarray, k: int) -> list[list[Any]]:
        from edge.core.types import Candidate

        out = []
        for row in embs @ self.matrix.T:
            best: dict[str, float] = {}
            for i in np.argsort(-row)[: 4 * k]:
                best.setdefault(self.skus[i], float(row[i]))
            out.append([Candidate(s, s, sc) for s, sc in list(best.items())[:k]])
        return out


def machine() -> dict[str, Any]:
    import platform
    from importlib.metadata import version

    import onnxruntime

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "prometheus_client": version("prometheus_client"), "load_avg": os.getloadavg()}


def scraper(url: str, interval: float, stop: threading.Event, times_ms: list[float]) -> None:
    while not stop.wait(interval):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
        times_ms.append((time.perf_counter() - t) * 1000)


def one_round(*, metrics: bool, args: argparse.Namespace, encoder: Any, matcher: BruteForceMatcher,
              clips: list[list[np.ndarray]], work: Path, scrape_ms: list[float]) -> tuple[float, float]:
    """Loop fps (frames processed per second, all cameras) over ``args.seconds`` after a warm-up, and the
    process CPU time per processed frame (all threads: capture, loop, encoder, metrics server, scraper)."""
    from edge.core.config import load_settings
    from edge.pipeline.capture import FrameSource
    from edge.pipeline.factory import assemble_runtime

    port = free_port()
    settings = load_settings(
        None, device={"store": "bench", "id": "metrics"}, catalog={"data_dir": str(work)},
        cameras=[{"name": f"cam{i}", "source": "virtual", "fps": args.fps} for i in range(args.cameras)],
        gate={"enabled": False}, decision={"window": 5, "min_frames": 2, "heartbeat_s": 3600},
        mqtt={"enabled": False}, ocr={"enabled": False}, metrics={"enabled": metrics, "port": port})
    def looping(i: int) -> Callable[[], FrameSource]:
        return lambda: LoopingClip(clips[i])

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
        f0, t0, cpu0 = rt.counts["frames"], time.monotonic(), cpu_s()
        time.sleep(args.seconds)
        frames, dt, cpu = rt.counts["frames"] - f0, time.monotonic() - t0, cpu_s() - cpu0
        scrape_stop.set()
        stop.set()
        loop.join()
        if metrics:
            scrape.join()
        rt.shutdown()
    return round(frames / dt, 2), round(1000 * cpu / max(1, frames), 3)


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


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
    ap.add_argument("--rounds", type=int, default=3, help="rounds per condition, alternating (default 3)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring each round")
    ap.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes (default 1)")
    ap.add_argument("--distractors", type=int, default=5_000, help="random vectors searched besides the products")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    from edge.core.config import ModelSettings
    from edge.models.encoders import load_image_encoder
    from edge.pipeline.demo import DEMO_PRODUCTS, reference_images

    encoder = load_image_encoder(ModelSettings())
    vecs = {p.sku: encoder.embed(reference_images(p)) for p in DEMO_PRODUCTS}
    matcher = BruteForceMatcher(vecs, args.distractors)
    clips = [LoopingClip.render(i) for i in range(args.cameras)]
    fps: dict[str, list[float]] = {"off": [], "on": []}
    cpu_ms: dict[str, list[float]] = {"off": [], "on": []}
    scrape_ms: list[float] = []
    order = [("off", "on") if r % 2 == 0 else ("on", "off") for r in range(args.rounds)]
    with tempfile.TemporaryDirectory(prefix="storelens-metrics-") as tmp:
        for r, pair in enumerate(order):
            for cond in pair:
                f, c = one_round(metrics=cond == "on", args=args, encoder=encoder, matcher=matcher, clips=clips,
                                 work=Path(tmp) / f"{r}-{cond}", scrape_ms=scrape_ms)
                fps[cond].append(f)
                cpu_ms[cond].append(c)
                print(f"round {r + 1} metrics {cond:3s}: {f:.1f} fps, {c:.2f} CPU ms/frame", flush=True)
    med = {k: statistics.median(v) for k, v in fps.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu_ms.items()}
    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
              "fps_off": fps["off"], "fps_on": fps["on"], "median_fps_off": med["off"], "median_fps_on": med["on"],
              "ratio_on_over_off": round(med["on"] / med["off"], 4) if med["off"] else None,
              "cpu_ms_per_frame_off": cpu_ms["off"], "cpu_ms_per_frame_on": cpu_ms["on"],
              "median_cpu_ms_per_frame_off": cpu_med["off"], "median_cpu_ms_per_frame_on": cpu_med["on"],
              "cpu_ratio_on_over_off": round(cpu_med["on"] / cpu_med["off"], 4) if cpu_med["off"] else None,
              "scrapes": len(scrape_ms), "scrape_ms_median": round(statistics.median(scrape_ms), 2) if scrape_ms
              else None, **hook_cost_us()}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
