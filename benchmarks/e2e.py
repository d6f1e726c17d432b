"""End-to-end latency and throughput of the edge runtime through a real Mosquitto, plus the fault drill.

What is measured (all in one run, side by side, with the machine and versions recorded):

* **latency**: frame capture time (the ``ts`` in the match message) to receipt by a real MQTT
  subscriber through a real Mosquitto started here from the installed binary; p50 / p99.
* **throughput**: ``--cameras N`` virtual cameras at ``--fps F`` each, the embedded default image
  encoder, a USearch i8 index with ``--index-size`` vectors (the demo products plus random
  distractors). ``fps_sustained`` is frames processed per camera per second; a camera thread keeps
  only its newest frame, so a backlog shows up as ``frames_skipped`` (captured but never processed).
  Run with gating (kiosk steady gate) and without (every frame embedded), side by side.
* **CPU and RSS** of this process (runtime + subscriber) from psutil.
* **outbox durability**: SQLite WAL insert cost with ``synchronous=NORMAL`` (survives a killed
  process; the default) vs ``FULL`` (survives power loss).
* ``--drill``: the real ``storelens run`` in a subprocess; the broker is stopped for
  ``--outage-s`` (30 s) and restarted, then the runtime is SIGKILLed and restarted. Every decision
  it wrote (JSONL) must reach the subscriber at least once (``lost`` = 0; duplicates share an id).

    python -m benchmarks.e2e [--cameras N] [--fps F] [--drill] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._broker import Broker, mosquitto_version

ROOT = Path(__file__).resolve().parents[1]


# -- a real subscriber ----------------------------------------------------------------------------

class Subscriber:
    """Receives match messages and records receipt time - capture time."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.latencies_ms: list[float] = []
        self.ids: list[str] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        now = time.time()
        m = json.loads(msg.payload)
        with self._lock:
            self.ids.append(m["id"])
            if not m.get("heartbeat"):
                self.latencies_ms.append((now - m["ts"]) * 1000)

    def reset(self) -> None:
        with self._lock:
            self.latencies_ms.clear()
            self.ids.clear()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- a matcher over a big USearch index ---------------------------------------------------------------

class IndexMatcher:
    """The demo products plus random distractors in one USearch i8 index (the Store's index type)."""

    def __init__(self, product_vecs: dict[str, np.ndarray], *, distractors: int, seed: int = 0,
                 cache: Path | None = None) -> None:
        from usearch.index import Index

        self.skus = list(product_vecs)
        dim = next(iter(product_vecs.values())).shape[1]
        self.index = Index(ndim=dim, metric="cos", dtype="i8", multi=True)
        if cache is not None and cache.exists():  # distractors only; the products are added fresh below
            self.index.load(str(cache))
        else:
            rng = np.random.default_rng(seed)
            step = 50_000
            for start in range(0, distractors, step):
                n = min(step, distractors - start)
                v = rng.standard_normal((n, dim)).astype(np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                self.index.add(np.arange(start, start + n, dtype=np.uint64) + 1_000_000, v, threads=2)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                self.index.save(str(cache))
        for i, sku in enumerate(self.skus):
            v = product_vecs[sku]
            self.index.add(np.full(len(v), i, np.uint64), v)

    @property
    def catalog_version(self) -> int:
        return 1

    def reload(self) -> bool:
        return False

    def match_vectors(self, embs: np.ndarray, k: int) -> list[list[Any]]:
        from edge.catalog.ranking import Hits, aggregate_hits
        from edge.core.types import Candidate

        res = self.index.search(embs, 2 * k)
        keys, dists = np.atleast_2d(res.keys), np.atleast_2d(res.distances)
        counts = np.atleast_1d(res.counts) if hasattr(res, "counts") else np.array([keys.shape[1]])
        out = []
        for row in aggregate_hits(Hits(keys, 1.0 - dists, counts), k=k, rule="max"):
            skus = [self.skus[key] if key < len(self.skus) else f"DISTRACTOR-{key}" for key, _ in row]
            out.append([Candidate(s, s, score) for s, (_, score) in zip(skus, row, strict=True)])
        return out


class LoopingCamera:
    """A virtual kiosk camera that never ends: each demo product held for ``hold`` frames, in turn.

    Frames (with sensor noise) are rendered up front so reading one costs a copy, not a render: the
    benchmark measures the runtime, not the camera simulator.
    """

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = frames
        self.i = 0

    def read(self) -> np.ndarray | None:
        f = self.frames[self.i % len(self.frames)]
        self.i += 1
        return f.copy()

    def close(self) -> None:
        pass


def clip(hold: int, seed: int) -> list[np.ndarray]:
    from edge.pipeline.demo import DEMO_PRODUCTS, light_and_noise, place, render_product, tray_background

    rng = np.random.default_rng(seed)
    bg = tray_background()
    frames = []
    for p in DEMO_PRODUCTS:
        held = place(bg, render_product(p), rng)
        frames += [light_and_noise(held, rng, jitter=0.05) for _ in range(hold)]
    return frames


# -- measurements ----------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q * 100)), 2) if values else None


def measure_pipeline(*, cameras: int, fps: float, seconds: float, gate: bool, matcher: IndexMatcher, encoder: Any,
                     broker: Broker, work: Path, hold: int) -> dict[str, Any]:
    import psutil

    from edge.core.config import load_settings
    from edge.pipeline.capture import FrameSource
    from edge.pipeline.factory import assemble_runtime

    tag = "gate" if gate else "nogate"
    settings = load_settings(
        None, device={"store": "bench", "id": tag}, catalog={"data_dir": str(work / tag)},
        cameras=[{"name": f"cam{i}", "source": "virtual", "fps": fps} for i in range(cameras)],
        gate={"enabled": gate, "steady_frames": 2}, decision={"window": 5, "min_frames": 2, "threshold": 0.9,
                                                               "margin": 0.05, "heartbeat_s": 3600},
        mqtt={"host": "127.0.0.1", "port": broker.port, "stats_interval_s": 5})
    sub = Subscriber(broker.port, f"storelens/bench/{tag}/+/match", f"bench-sub-{tag}")
    time.sleep(0.3)
    clips = {i: clip(hold, i) for i in range(cameras)}

    def looping(i: int) -> Callable[[], FrameSource]:
        return lambda: LoopingCamera(clips[i])

    sources = {f"cam{i}": looping(i) for i in range(cameras)}
    rt = assemble_runtime(settings=settings, encoder=encoder, matcher=matcher, sources=sources, out=open(os.devnull,
                          "w"))
    proc = psutil.Process()
    rt.start()
    stop = threading.Event()
    loop = threading.Thread(target=rt.run, args=(stop,))
    loop.start()
    time.sleep(2.0)  # warm-up: sessions, first decisions
    sub.reset()
    f0 = rt.counts["frames"]
    c0 = sum(c.stats.frames for c in rt.cameras)
    cpu0 = proc.cpu_times()
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    cpu1 = proc.cpu_times()
    processed = rt.counts["frames"] - f0
    captured = sum(c.stats.frames for c in rt.cameras) - c0
    stop.set()
    loop.join()
    summary = rt.shutdown()
    time.sleep(0.5)
    sub.stop()
    lat = list(sub.latencies_ms)
    return {
        "gate": gate, "cameras": cameras, "fps_target": fps, "seconds": round(dt, 1),
        "fps_sustained": round(processed / dt / cameras, 2),
        "frames_captured": captured, "frames_processed": processed,
        "frames_skipped": max(0, captured - processed),
        "decisions_received": len(lat), "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
        "runtime_latency_ms": summary["latency_ms"],  # capture -> handed to the MQTT link, inside the process
        "cpu_percent": round(100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / dt, 1),
        "rss_mb": round(proc.memory_info().rss / 2**20, 1),
        "embedded": summary["gate"]["embedded"], "gate_skip_ratio": summary["gate"]["skip_ratio"],
    }


def measure_outbox(n: int, work: Path) -> dict[str, Any]:
    from edge.comms.outbox import Outbox

    out: dict[str, Any] = {}
    payload = json.dumps({"candidates": [{"sku": "X" * 12, "name": "Y" * 24, "score": 0.9}] * 5}).encode()
    for durability in ("process", "power"):
        ob = Outbox(path=work / f"outbox-{durability}.db", durability=durability)  # type: ignore[arg-type]
        times = []
        for i in range(n):
            t = time.perf_counter()
            ob.put(msg_id=str(i), topic="t", payload=payload)
            times.append((time.perf_counter() - t) * 1000)
        ob.close()
        out["normal" if durability == "process" else "full"] = {"p50_ms": pct(times, 0.5), "p99_ms": pct(times, 0.99),
                                                               "mean_ms": round(float(np.mean(times)), 4)}
    out["full_over_normal_p50"] = round(out["full"]["p50_ms"] / max(out["normal"]["p50_ms"], 1e-6), 1)
    return out


# -- the fault drill -------------------------------------------------------------------------------

def drill(work: Path, broker: Broker, *, outage_s: float, settle_s: float) -> dict[str, Any]:
    """The real CLI in a subprocess: broker outage, broker back, SIGKILL, restart, SIGTERM."""
    import cv2

    from edge.pipeline.demo import DEMO_PRODUCTS, VirtualCamera

    frames = work / "drill-frames"
    frames.mkdir()
    cam = VirtualCamera(DEMO_PRODUCTS, hold=8, gap=4)
    i = 0
    while (f := cam.read()) is not None:
        cv2.imwrite(str(frames / f"{i:05d}.jpg"), f)
        i += 1
    data = work / "drill-data"
    _enroll_demo(data)
    cfg = work / "drill.toml"
    jsonl = work / "drill-decisions.jsonl"
    cfg.write_text(f"""jsonl_out = "{jsonl}"
[device]
store = "bench"
id = "drill"
[catalog]
data_dir = "{data}"
[[cameras]]
name = "cam"
source = "{frames}"
loop = true
fps = 15
[decision]
window = 5
min_frames = 3
threshold = 0.93
margin = 0.1
heartbeat_s = 3600
[mqtt]
host = "127.0.0.1"
port = {broker.port}
keepalive_s = 5
flush_timeout_s = 10
""")
    sub = Subscriber(broker.port, "storelens/bench/drill/+/match", "drill-sub")
    time.sleep(0.3)
    log = (work / "drill-run.log").open("ab")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(cfg)], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)

    def decided() -> list[str]:
        return [json.loads(x)["id"] for x in jsonl.read_text().splitlines()] if jsonl.exists() else []

    phases: dict[str, int] = {}
    proc = start()
    time.sleep(settle_s)
    phases["before_outage"] = len(decided())
    broker.stop()
    time.sleep(outage_s)
    phases["during_outage"] = len(decided()) - phases["before_outage"]
    broker.start()
    time.sleep(settle_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    phases["before_kill"] = len(decided())
    proc = start()
    time.sleep(settle_s)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(60)
    time.sleep(2)
    sub.stop()
    ids = decided()
    received = set(sub.ids)
    return {"decisions": len(ids), "received": len(sub.ids), "received_unique": len(received & set(ids)),
            "duplicates": len(sub.ids) - len(received), "lost": len(set(ids) - received), "exit_code": rc,
            "outage_s": outage_s, "phases": phases}


def _enroll_demo(data: Path) -> dict[str, np.ndarray]:
    from edge.catalog.store import Store
    from edge.core.config import load_settings
    from edge.models.encoders import load_image_encoder
    from edge.pipeline.demo import DEMO_PRODUCTS, reference_images

    s = load_settings(None, device={"store": "bench", "id": "x"}, catalog={"data_dir": str(data)})
    enc = load_image_encoder(s.model)
    store = Store.from_settings(s, image_encoder=enc, text_encoder=None)
    vecs = {}
    for p in DEMO_PRODUCTS:
        imgs = reference_images(p)
        store.enroll(p.sku, name=p.name, images=imgs)
        vecs[p.sku] = enc.embed(imgs)
    store.close()
    return vecs


def machine() -> dict[str, Any]:
    import onnxruntime
    import paho.mqtt
    import usearch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "paho_mqtt": paho.mqtt.__version__, "usearch": usearch.__version__,
            "mosquitto": mosquitto_version(),
            "load_avg": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=1, help="virtual cameras (default 1)")
    ap.add_argument("--fps", type=float, default=30.0, help="frames per second per camera (default 30)")
    ap.add_argument("--seconds", type=float, default=15.0, help="measured seconds per configuration")
    ap.add_argument("--hold", type=int, default=8, help="frames each product is held in front of a camera")
    ap.add_argument("--index-size", type=int, default=250_000, help="vectors in the index (distractors added)")
    ap.add_argument("--sweep", help="also try these camera counts at --sweep-fps with gating, e.g. 1,2,4,6: "
                    "reports the most cameras sustained (>= 95%% of the fps, <= 5%% frames skipped)")
    ap.add_argument("--sweep-fps", type=float, default=15.0, help="frame rate of each camera in --sweep (default 15)")
    ap.add_argument("--drill", action="store_true", help="also run the fault drill (broker outage + SIGKILL)")
    ap.add_argument("--outage-s", type=float, default=30.0, help="drill: broker outage length")
    ap.add_argument("--index-cache", type=Path, help="save the distractor index here / load it if present "
                    "(building 250k vectors takes minutes on 2 busy cores)")
    ap.add_argument("--outbox-n", type=int, default=3000, help="inserts per outbox durability setting")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop our Mosquitto and remove the temp dir

    from edge.core.config import ModelSettings
    from edge.models.encoders import load_image_encoder

    result: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="storelens-e2e-") as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Broker.on_free_port(work / "broker", extra_config="max_queued_messages 100000\n")
        broker.start()
        try:
            encoder = load_image_encoder(ModelSettings())
            vecs = _enroll_demo(work / "enroll")
            t = time.monotonic()
            n_distract = max(0, args.index_size - sum(len(v) for v in vecs.values()))
            cache = args.index_cache.with_suffix(f".{n_distract}.usearch") if args.index_cache else None
            matcher = IndexMatcher(vecs, distractors=n_distract, cache=cache)
            result["index"] = {"vectors": len(matcher.index), "dtype": "i8", "build_s": round(time.monotonic() - t, 1)}
            runs = [measure_pipeline(cameras=args.cameras, fps=args.fps, seconds=args.seconds, gate=g, matcher=matcher,
                                     encoder=encoder, broker=broker, work=work, hold=args.hold) for g in (True, False)]
            result["with_gate"], result["without_gate"] = runs
            result.update({k: runs[0][k] for k in ("p50_ms", "p99_ms", "cameras", "fps_sustained", "rss_mb")})
            if args.sweep:
                sweep = [measure_pipeline(cameras=int(n), fps=args.sweep_fps, seconds=args.seconds, gate=True,
                                          matcher=matcher, encoder=encoder, broker=broker, work=work / f"sweep{n}",
                                          hold=args.hold) for n in args.sweep.split(",")]
                ok = [x["cameras"] for x in sweep if x["fps_sustained"] >= 0.95 * args.sweep_fps
                      and x["frames_skipped"] <= 0.05 * max(1, x["frames_captured"])]
                result["sweep"] = sweep
                result["max_cameras_sustained"] = max(ok) if ok else 0
            result["outbox"] = measure_outbox(args.outbox_n, work)
            if args.drill:
                result["drill"] = drill(work, broker, outage_s=args.outage_s, settle_s=8.0)
                result.update({k: result["drill"][k] for k in ("decisions", "received_unique", "lost")})
        finally:
            broker.stop()
    _print(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


def _print(r: dict[str, Any]) -> None:
    print(f"machine: {r['machine']['processor']} x{r['machine']['cpus']}, load {r['machine']['load_avg']}, "
          f"onnxruntime {r['machine']['onnxruntime']}, usearch {r['machine']['usearch']}, {r['machine']['mosquitto']}")
    print(f"index: {r['index']['vectors']} vectors ({r['index']['dtype']})")
    print(f"{'config':12s} {'cams':>4s} {'fps/cam':>8s} {'target':>6s} {'skipped':>8s} {'p50 ms':>7s} {'p99 ms':>7s} "
          f"{'n':>4s} {'cpu %':>6s} {'rss MB':>7s} {'gate skip':>9s}")
    rows = [("with_gate", r["with_gate"]), ("without_gate", r["without_gate"])]
    rows += [("sweep", x) for x in r.get("sweep", [])]
    for key, x in rows:
        print(f"{key:12s} {x['cameras']:4d} {x['fps_sustained']:8.2f} {x['fps_target']:6g} "
              f"{x['frames_skipped']:8d} {x['p50_ms']!s:>7s} {x['p99_ms']!s:>7s} {x['decisions_received']:4d} "
              f"{x['cpu_percent']:6.1f} {x['rss_mb']:7.1f} {x['gate_skip_ratio']:9.2f}")
    if "max_cameras_sustained" in r:
        print(f"most cameras sustained at {r['sweep'][0]['fps_target']:g} fps: {r['max_cameras_sustained']}")
    o = r["outbox"]
    print(f"outbox insert: synchronous=NORMAL p50 {o['normal']['p50_ms']} ms p99 {o['normal']['p99_ms']} ms | "
          f"FULL p50 {o['full']['p50_ms']} ms p99 {o['full']['p99_ms']} ms ({o['full_over_normal_p50']}x)")
    if "drill" in r:
        d = r["drill"]
        print(f"drill: outage {d['outage_s']}s + SIGKILL: decisions {d['decisions']}, received {d['received']} "
              f"(unique {d['received_unique']}, duplicates {d['duplicates']}), lost {d['lost']}, "
              f"exit {d['exit_code']}")


if __name__ == "__main__":
    sys.exit(main())
