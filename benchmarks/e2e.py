"""End to end through the shipped path: cameras -> the real runtime -> the real ``Store`` -> Mosquitto -> a subscriber.

What runs: virtual kiosk cameras (a product placed on the tray and held still for ``--hold``
frames, then the empty tray for ``--gap``) play through the real runtime
(:func:`edge.pipeline.factory.assemble_runtime`) with the embedded image bundle and the real
catalog :class:`~edge.catalog.store.Store` (SQLite lookup, USearch i8 index with StoreLens's own
rounding, the runtime's top-3 aggregation), decisions published through the outbox into a real
Mosquitto started here and received by a real subscriber. The catalog holds the six demo products
(enrolled from photos) plus distractors up to ``--index-size`` vectors. The distractors are not
isotropic noise: each distractor product is a cluster of photos around a real embedding (the
Grocery Store train photos, ``--seed-photos``; augmented renders of made-up packages when the
dataset is absent), so the index has the neighbourhood structure of a real catalog.

Measured (all in one run, machine and versions recorded):

* **time to decision**: first frame of a new view (the product placed) -> its match message at the
  subscriber, p50 / p95 over the views shown; and how many views were decided, correctly.
* **per-frame latency**: capture -> the loop round that took the frame is done (gate, embed,
  search, vote, outbox), p50 / p95 / p99; and capture of the deciding frame -> subscriber.
* **throughput**: frames processed per camera per second at ``--fps`` (a camera keeps only its
  newest frame: a backlog shows as ``frames_skipped``), gate on and off; ``--sweep`` tries several
  camera counts at ``--sweep-fps`` and reports the most sustained (>= 95 % fps, <= 5 % skipped).
* **CPU and RSS** of this process (runtime, index and subscriber).
* **outbox**: insert cost with ``synchronous=NORMAL`` vs ``FULL``.
* ``--drill``: the real ``storelens run`` in a subprocess; the broker goes away, the runtime is
  SIGKILLed while its outbox holds at least ``--drill-undelivered`` messages, then broker and runtime
  come back. Every decision it wrote (JSONL) must reach the subscriber (``lost`` = 0, else exit 1);
  duplicates (same id twice) are counted and must be messages the killed process had not seen
  acknowledged.

    python -m benchmarks.e2e [--cameras N] [--fps F] [--index-size N] [--sweep 1,2,4] [--drill] [--json OUT]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._broker import Broker, mosquitto_version

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEED_PHOTOS = ROOT.parent / "shared" / "datasets" / "grocery-store" / "train.txt"
PHOTOS_PER_DISTRACTOR = 5
DISTRACTOR = "DIST-"  # sku prefix of the distractor products
SIGMA_CENTRE = 0.6  # a distractor product's centre: a real embedding + this much noise (cos ~0.86 to it)
SIGMA_PHOTO = 0.35  # its photos around the centre (cos ~0.94 to it, ~0.89 to each other)


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q * 100)), 2) if values else None


# -- the subscriber ---------------------------------------------------------------------------------

class Subscriber:
    """A real MQTT subscriber: every match message with its receipt time (returns once subscribed)."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.got: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError(f"no SUBACK for {topic}")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        now = time.time()
        with self._lock:
            self.got.append((now, json.loads(msg.payload)))

    def reset(self) -> None:
        with self._lock:
            self.got.clear()

    def ids(self) -> list[str]:
        with self._lock:
            return [m["id"] for _, m in self.got]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the catalog: demo products + clustered distractors, in a real Store -------------------------------

def seed_embeddings(encoder: Any, seed_photos: Path | None, limit: int, rng: np.random.Generator) -> tuple[
        np.ndarray, str]:
    """Real embeddings the distractor clusters sit around: catalog photos, or augmented made-up packages."""
    from edge.models.preprocess import read_image

    if seed_photos is not None and seed_photos.is_file():
        root = seed_photos.parent
        paths = [root / ln.split(",")[0].strip() for ln in seed_photos.read_text().splitlines() if ln.strip()]
        paths = [paths[i] for i in sorted(rng.choice(len(paths), min(limit, len(paths)), replace=False))]
        embs = [encoder.embed([read_image(p) for p in paths[i: i + 32]]) for i in range(0, len(paths), 32)]
        return np.concatenate(embs), f"{len(paths)} photos of {seed_photos}"
    from edge.pipeline.demo import SHAPES, DemoProduct, place, render_product, tray_background

    bg, out = tray_background(), []
    for i in range(limit):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        art = render_product(DemoProduct(f"X{i}", f"Brand{i} Item {i}", colour, SHAPES[i % len(SHAPES)]))  # type: ignore[arg-type]
        out.append(place(bg, art, rng))
    embs = [encoder.embed(out[i: i + 32]) for i in range(0, len(out), 32)]
    return np.concatenate(embs), f"{limit} augmented renders of made-up packages"


def clustered(seeds: np.ndarray, n_products: int, rng: np.random.Generator) -> np.ndarray:
    """(n_products, PHOTOS_PER_DISTRACTOR, D) unit vectors: per product a centre near a random seed, photos
    around it."""
    d = seeds.shape[1]

    def unit(v: np.ndarray) -> np.ndarray:
        return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)

    centres = unit(seeds[rng.integers(0, len(seeds), n_products)] + SIGMA_CENTRE * rng.standard_normal(
        (n_products, d)) / np.sqrt(d))
    noise = rng.standard_normal((n_products, PHOTOS_PER_DISTRACTOR, d)) / np.sqrt(d)
    photos = centres[:, None, :] + SIGMA_PHOTO * noise
    return unit(photos)


def build_store(data: Path, encoder: Any, *, index_size: int, seed_photos: Path | None, seed: int,
                seed_limit: int = 3000) -> dict[str, Any]:
    """The demo products enrolled from photos and clustered distractors, indexed by the writer's own rebuild."""
    from edge.catalog import index as ix
    from edge.catalog.db import Product
    from edge.catalog.store import Store
    from edge.pipeline.demo import DEMO_PRODUCTS, reference_images

    rng = np.random.default_rng(seed)
    store = Store(data_dir=data, image_encoder=encoder, dtype="i8", threads=os.cpu_count() or 1)
    for p in DEMO_PRODUCTS:
        store.enroll(p.sku, name=p.name, images=reference_images(p))
    seeds, seeds_from = seed_embeddings(encoder, seed_photos, seed_limit, rng)
    n_products = max(0, (index_size - 3 * len(DEMO_PRODUCTS)) // PHOTOS_PER_DISTRACTOR)
    t = time.monotonic()
    for start in range(0, n_products, 10_000):
        vecs = clustered(seeds, min(10_000, n_products - start), rng)
        with store.catalog.transaction() as db:
            for j, photos in enumerate(vecs, start):
                key = store.catalog.upsert_product(db, Product(key=0, sku=f"{DISTRACTOR}{j:06d}",
                                                               name=f"Distractor {j}"))
                for v in photos:
                    store.catalog.add_vector(db, key, modality="image", fingerprint=encoder.fingerprint, vector=v)
    with ix.writer_lock(data):
        store.writer.rebuild_one("image", encoder)
    store.close()
    sample = clustered(seeds, 20_000, rng)
    pair_cos = float(np.mean(np.sum(sample[:1000, 0] * sample[1000:2000, 0], axis=1)))
    nearest = []
    for j in range(200):
        sims = sample @ sample[j, 0]
        sims[j] = -1.0
        nearest.append(float(sims.max()))
    return {"distractor_products": n_products, "seeds": seeds_from, "sigma_centre": SIGMA_CENTRE,
            "sigma_photo": SIGMA_PHOTO, "mean_cos_random_pairs": round(pair_cos, 3),
            "nearest_other_product_cos_p50": round(float(np.median(nearest)), 3),  # among 20k products
            "mean_cos_random_seed_pairs": round(float(np.mean(np.sum(seeds[: len(seeds) // 2] *
                                                                     seeds[len(seeds) // 2: 2 * (len(seeds) // 2)],
                                                                     axis=1))), 3),
            "build_s": round(time.monotonic() - t, 1)}


# -- cameras ------------------------------------------------------------------------------------------

@dataclass
class Clip:
    """Pre-rendered kiosk frames (so reading one costs a copy) and what each one shows."""

    frames: list[np.ndarray]
    truth: list[str | None]


def kiosk_clip(hold: int, gap: int, seed: int) -> Clip:
    from edge.pipeline.demo import DEMO_PRODUCTS, VirtualCamera

    order = tuple(np.random.default_rng(seed).permutation(np.array(DEMO_PRODUCTS, dtype=object)))
    cam = VirtualCamera(order, hold=hold, gap=gap, seed=seed)
    frames = []
    while (f := cam.read()) is not None:
        frames.append(f)
    return Clip(frames, cam.truth[: len(frames)])


@dataclass
class LoopingCamera:
    """Plays a clip forever and logs when each view starts (the first frame of a product, or of the empty tray)."""

    clip: Clip
    i: int = 0
    views: list[tuple[float, str | None]] = field(default_factory=list)  # (wall time of first frame, sku or None)

    def read(self) -> np.ndarray | None:
        k = self.i % len(self.clip.frames)
        if self.i == 0 or self.clip.truth[k] != self.clip.truth[k - 1]:
            self.views.append((time.time(), self.clip.truth[k]))
        self.i += 1
        return self.clip.frames[k].copy()

    def close(self) -> None:
        pass


class FrameTimer:
    """Runtime hooks that time each frame from capture to the end of the loop round that took it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.taken: list[float] = []
        self.latencies_ms: list[float] = []
        self.recording = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def frame(self, frame: Any) -> None:
        self.taken.append(frame.ts)

    def tick(self, rt: Any, *, force: bool = False) -> None:
        now = time.time()
        if self.recording:
            self.latencies_ms += [(now - ts) * 1000 for ts in self.taken]
        self.taken.clear()


def time_to_decision(cams: list[LoopingCamera], got: list[tuple[float, dict[str, Any]]], *, t0: float,
                     t1: float) -> dict[str, Any]:
    """Per product view shown in [t0, t1): its first match message (receipt - first frame), and whether it was right."""
    ttd, right, wrong, unknown, missed, extra = [], 0, 0, 0, 0, 0
    for i, cam in enumerate(cams):
        starts = [t for t, _ in cam.views]
        first: dict[int, tuple[float, dict[str, Any]]] = {}
        for recv, m in got:
            if m["camera"] != f"cam{i}" or m.get("heartbeat"):
                continue
            v = bisect.bisect_right(starts, m["ts"]) - 1
            if v < 0 or cam.views[v][1] is None:
                continue  # the empty tray's own view
            if v in first:
                extra += 1
            else:
                first[v] = (recv, m)
        for v, (start, sku) in enumerate(cam.views[:-1]):
            if sku is None or not t0 <= start < t1:
                continue
            if v not in first:
                missed += 1
                continue
            recv, m = first[v]
            ttd.append((recv - start) * 1000)
            top = m["candidates"][0]["sku"] if m["decision"] == "known" and m["candidates"] else None
            right += top == sku
            unknown += top is None
            wrong += top is not None and top != sku
    return {"views": len(ttd) + missed, "decided": len(ttd), "right": right, "unknown": unknown, "wrong": wrong,
            "missed": missed, "extra_events": extra, "p50_ms": pct(ttd, 0.5), "p95_ms": pct(ttd, 0.95)}


def _factory(cam: LoopingCamera) -> Any:
    return lambda: cam


# -- one measured configuration ------------------------------------------------------------------------

def measure_pipeline(*, cameras: int, fps: float, seconds: float, gate: bool, store: Any,
                     thresholds: tuple[float, float], broker: Broker, work: Path, hold: int,
                     gap: int) -> dict[str, Any]:
    import psutil

    from edge.core.config import load_settings
    from edge.pipeline.capture import FrameSource
    from edge.pipeline.factory import assemble_runtime

    tag = f"{'gate' if gate else 'nogate'}{cameras}x{fps:g}"
    settings = load_settings(
        None, device={"store": "bench", "id": tag}, catalog={"data_dir": str(store.data_dir)},
        cameras=[{"name": f"cam{i}", "source": "virtual", "fps": fps, "mode": "kiosk"} for i in range(cameras)],
        gate={"enabled": gate, "steady_frames": 2},
        decision={"window": 5, "min_frames": 2, "agreement": 0.6, "threshold": thresholds[0],
                  "margin": thresholds[1], "heartbeat_s": 30},
        mqtt={"host": "127.0.0.1", "port": broker.port, "stats_interval_s": 5}, ocr={"enabled": False})
    sub = Subscriber(broker.port, f"storelens/bench/{tag}/+/match", f"bench-sub-{tag}")
    cams = [LoopingCamera(kiosk_clip(hold, gap, seed=i)) for i in range(cameras)]
    sources: dict[str, Callable[[], FrameSource]] = {f"cam{i}": _factory(c) for i, c in enumerate(cams)}
    (work / tag).mkdir(parents=True, exist_ok=True)
    rt = assemble_runtime(settings=settings, encoder=store.image_encoder, matcher=store, sources=sources,
                          out=open(os.devnull, "w"), outbox_path=work / tag / "outbox.db")
    timer = FrameTimer(rt.hooks)
    rt.hooks = timer  # type: ignore[assignment]
    proc = psutil.Process()
    rt.start()
    stop = threading.Event()
    loop = threading.Thread(target=rt.run, args=(stop,))
    loop.start()
    time.sleep(3.0)  # warm-up: sessions, first decisions
    sub.reset()
    timer.recording = True
    f0, c0, cpu0 = rt.counts["frames"], sum(c.stats.frames for c in rt.cameras), proc.cpu_times()
    t0, w0 = time.monotonic(), time.time()
    time.sleep(seconds)
    dt, w1 = time.monotonic() - t0, time.time()
    cpu1 = proc.cpu_times()
    processed = rt.counts["frames"] - f0
    captured = sum(c.stats.frames for c in rt.cameras) - c0
    timer.recording = False
    rss = proc.memory_info().rss
    time.sleep(2.0)  # decisions of views shown near the end still arrive
    stop.set()
    loop.join()
    summary = rt.shutdown()
    sub.stop()
    got = list(sub.got)
    hold_s = (hold + gap) / fps
    deciding = [(recv - m["ts"]) * 1000 for recv, m in got if not m.get("heartbeat")]
    return {
        "gate": gate, "cameras": cameras, "fps_target": fps, "seconds": round(dt, 1),
        "fps_sustained": round(processed / dt / cameras, 2), "frames_captured": captured,
        "frames_processed": processed, "frames_skipped": max(0, captured - processed),
        "time_to_decision": time_to_decision(cams, got, t0=w0, t1=w1 - hold_s),
        "frame_latency_ms": {"p50": pct(timer.latencies_ms, 0.5), "p95": pct(timer.latencies_ms, 0.95),
                             "p99": pct(timer.latencies_ms, 0.99)},
        "deciding_frame_to_subscriber_ms": {"p50": pct(deciding, 0.5), "p95": pct(deciding, 0.95)},
        "cpu_percent": round(100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / dt, 1),
        "rss_mb": round(rss / 2**20, 1), "embedded": summary["gate"]["embedded"],
        "gate_skip_ratio": summary["gate"]["skip_ratio"], "errors": summary["errors"],
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

def _wait(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        time.sleep(0.05)
    return bool(cond())


def _outbox_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        return [r[0] for r in db.execute("SELECT msg_id FROM outbox ORDER BY seq")]


def drill(work: Path, broker: Broker, *, encoder: Any, thresholds: tuple[float, float], undelivered: int,
          max_outage_s: float) -> dict[str, Any]:
    """The real CLI in a subprocess: broker away, SIGKILL with >= ``undelivered`` in the outbox, both back."""
    import cv2

    from edge.catalog.store import Store
    from edge.pipeline.demo import DEMO_PRODUCTS, VirtualCamera, reference_images

    frames, data, jsonl = work / "drill-frames", work / "drill-data", work / "drill-decisions.jsonl"
    frames.mkdir()
    cam = VirtualCamera(DEMO_PRODUCTS, hold=8, gap=4)
    i = 0
    while (f := cam.read()) is not None:
        cv2.imwrite(str(frames / f"{i:05d}.jpg"), f)
        i += 1
    store = Store(data_dir=data, image_encoder=encoder, dtype="i8")
    for p in DEMO_PRODUCTS:
        store.enroll(p.sku, name=p.name, images=reference_images(p))
    store.close()
    cfg = work / "drill.toml"
    cfg.write_text(f'jsonl_out = "{jsonl}"\n[device]\nstore = "bench"\nid = "drill"\n[catalog]\ndata_dir = "{data}"\n'
                   f'[[cameras]]\nname = "cam"\nsource = "{frames}"\nloop = true\nfps = 15\n'
                   f"[decision]\nwindow = 5\nmin_frames = 3\nthreshold = {thresholds[0]}\nmargin = {thresholds[1]}\n"
                   f'[ocr]\nenabled = false\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nkeepalive_s = 5\n'
                   "flush_timeout_s = 10\n")
    sub = Subscriber(broker.port, "storelens/bench/drill/+/match", "drill-sub")
    log = (work / "drill-run.log").open("ab")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(cfg)], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)

    def decided() -> list[str]:
        return [json.loads(x)["id"] for x in jsonl.read_text().splitlines()] if jsonl.exists() else []

    proc = start()
    t = {"started": time.monotonic()}
    ok = _wait(lambda: len(sub.ids()) >= 3, 120)
    broker.stop()
    t["outage"] = time.monotonic()
    filled = _wait(lambda: len(_outbox_ids(data / "outbox.db")) >= undelivered, max_outage_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = _outbox_ids(data / "outbox.db")
    t["killed"] = time.monotonic()
    broker.start()
    proc = start()
    _wait(lambda: set(left) <= set(sub.ids()), 60)
    n = len(decided())
    _wait(lambda: len(decided()) >= n + 5, 60)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(60)
    ids = decided()
    _wait(lambda: set(ids) <= set(sub.ids()), 30)
    sub.stop()
    received = sub.ids()
    dupes = [i for i, c in Counter(received).items() if c > 1]
    return {"decisions": len(ids), "undelivered_at_kill": len(left), "outbox_filled": filled and ok,
            "received": len(received), "received_unique": len(set(received) & set(ids)),
            "received_not_in_jsonl": len(set(received) - set(ids)),  # in the outbox, not yet in the JSONL at the kill
            "duplicates": len(dupes), "duplicates_not_undelivered": len(set(dupes) - set(left)),
            "lost": len(set(ids) - set(received)), "exit_code": rc,
            "outage_s": round(t["killed"] - t["outage"], 1)}


# -- the run -------------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    import onnxruntime
    import paho.mqtt
    import usearch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "paho_mqtt": paho.mqtt.__version__, "usearch": usearch.__version__,
            "mosquitto": mosquitto_version(), "load_avg": os.getloadavg()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=1, help="virtual cameras (default 1)")
    ap.add_argument("--fps", type=float, default=15.0, help="frames per second per camera (default 15)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per configuration")
    ap.add_argument("--hold", type=int, default=12, help="frames a product is held still in front of a camera")
    ap.add_argument("--gap", type=int, default=6, help="frames of empty tray between products")
    ap.add_argument("--index-size", type=int, default=250_000, help="vectors in the index (distractors added)")
    ap.add_argument("--seed-photos", type=Path, default=DEFAULT_SEED_PHOTOS,
                    help="split file of real photos the distractor clusters sit around (default: Grocery Store train)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the distractors")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "e2e-cache",
                    help="keep the built catalog here, keyed by everything that changes it (catalog_key; a 250k "
                         "build takes minutes); a reused build reports cached_build_s")
    ap.add_argument("--sweep", help="also these camera counts at --sweep-fps with gating, e.g. 1,2,4,6")
    ap.add_argument("--sweep-fps", type=float, default=15.0)
    ap.add_argument("--no-gate-run", action="store_true", help="skip the gate-off comparison")
    ap.add_argument("--drill", action="store_true", help="also run the fault drill (SIGKILL with messages undelivered)")
    ap.add_argument("--drill-undelivered", type=int, default=10, help="drill: outbox depth at the SIGKILL, at least")
    ap.add_argument("--outage-s", type=float, default=60.0, help="drill: longest broker outage to fill the outbox")
    ap.add_argument("--outbox-n", type=int, default=3000, help="inserts per outbox durability setting")
    ap.add_argument("--json", type=Path, help="write the results here")
    return ap.parse_args(argv)


def catalog_key(encoder: Any, *, index_size: int, seed: int, seed_photos: Path | None,
                seed_limit: int = 3000) -> dict[str, Any]:
    """Everything that changes the built catalog: the bundle, size, seeds, the seed photos (the split file's
    bytes), the distractor recipe, the demo products and the HNSW build settings the writer uses."""
    import hashlib

    from edge.catalog import index as ix
    from edge.pipeline.demo import DEMO_PRODUCTS

    photos = None
    if seed_photos is not None and seed_photos.is_file():
        photos = {"file": str(seed_photos), "sha256": hashlib.sha256(seed_photos.read_bytes()).hexdigest()}
    return {"bundle": encoder.fingerprint, "index_size": index_size, "seed": seed, "seed_limit": seed_limit,
            "seed_photos": photos, "photos_per_distractor": PHOTOS_PER_DISTRACTOR, "sigma_centre": SIGMA_CENTRE,
            "sigma_photo": SIGMA_PHOTO, "demo_products": [p.sku for p in DEMO_PRODUCTS], "dtype": "i8",
            "connectivity": ix.DEFAULT_CONNECTIVITY, "expansion_add": ix.DEFAULT_EXPANSION_ADD, "recipe": 3}


def open_catalog(args: argparse.Namespace, encoder: Any) -> tuple[Any, dict[str, Any]]:
    """The built catalog for these settings: reused from ``--cache`` only when every input of
    :func:`catalog_key` matches; a reused build's own figures are labelled ``cached_*``."""
    import hashlib

    from edge.catalog.store import Store

    key = catalog_key(encoder, index_size=args.index_size, seed=args.seed, seed_photos=args.seed_photos)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    data = args.cache / f"{encoder.fingerprint}-{args.index_size}-s{args.seed}-{digest}"
    info_file = data / "bench-catalog.json"
    cached = info_file.exists()
    if not cached:
        info = build_store(data, encoder, index_size=args.index_size, seed_photos=args.seed_photos, seed=args.seed)
        info_file.write_text(json.dumps({**info, "key": key}, indent=2))
    info = json.loads(info_file.read_text())
    if info.pop("key", None) != key:
        raise RuntimeError(f"{info_file} was built with other settings than its folder name says; remove {data}")
    if cached:  # measured when the cache was built, not in this run
        info = {("cached_build_s" if k == "build_s" else k): v for k, v in info.items()}
    info.update({"cached": cached, "key": key})
    t = time.monotonic()
    store = Store(data_dir=data, image_encoder=encoder, dtype="i8", threads=1)
    meta = store.index_meta("image")
    assert meta is not None
    info.update({"vectors": meta.vectors, "products": meta.products, "dtype": meta.dtype,
                 "open_s": round(time.monotonic() - t, 2), "data_dir": str(data),
                 "demo_vs_distractors": _rivals(store)})
    return store, info


def _rivals(store: Any) -> dict[str, float]:
    """Fresh shots of the demo products: their own product's score and the best distractor's, at the median."""
    from edge.pipeline.demo import DEMO_PRODUCTS, reference_images

    own, rival = [], []
    for p in DEMO_PRODUCTS:
        for ranked in store.search_image(reference_images(p, seed=1), k=10):
            own.append(next((r.score for r in ranked if r.sku == p.sku), 0.0))
            rival.append(max((r.score for r in ranked if r.sku.startswith(DISTRACTOR)), default=0.0))
    return {"own_p50": round(float(np.median(own)), 3), "best_distractor_p50": round(float(np.median(rival)), 3)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop our Mosquitto and remove the temp dir

    from edge.core.config import ModelSettings
    from edge.models.encoders import load_image_encoder
    from edge.pipeline.demo import calibrate_demo

    encoder = load_image_encoder(ModelSettings())
    thresholds = calibrate_demo(encoder)
    result: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                              "bundle": encoder.fingerprint, "thresholds": thresholds}
    store, result["catalog"] = open_catalog(args, encoder)
    with tempfile.TemporaryDirectory(prefix="storelens-e2e-") as tmp:
        work = Path(tmp)
        broker = Broker.on_free_port(work / "broker", extra_config="max_queued_messages 100000\n")
        broker.start()
        try:
            run = dict(store=store, thresholds=thresholds, broker=broker, work=work, hold=args.hold, gap=args.gap,
                       seconds=args.seconds)
            result["with_gate"] = measure_pipeline(cameras=args.cameras, fps=args.fps, gate=True, **run)
            if not args.no_gate_run:
                result["without_gate"] = measure_pipeline(cameras=args.cameras, fps=args.fps, gate=False, **run)
            if args.sweep:
                sweep = [measure_pipeline(cameras=int(n), fps=args.sweep_fps, gate=True, **run)
                         for n in args.sweep.split(",")]
                ok = [x["cameras"] for x in sweep if x["fps_sustained"] >= 0.95 * args.sweep_fps
                      and x["frames_skipped"] <= 0.05 * max(1, x["frames_captured"])]
                result["sweep"] = sweep
                result["max_cameras_sustained"] = max(ok) if ok else 0
            result["outbox"] = measure_outbox(args.outbox_n, work)
            if args.drill:
                result["drill"] = drill(work, broker, encoder=encoder, thresholds=thresholds,
                                        undelivered=args.drill_undelivered, max_outage_s=args.outage_s)
        finally:
            broker.stop()
            store.close()
    _print(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    d = result.get("drill")
    return 1 if d and (d["lost"] or d["duplicates_not_undelivered"] or not d["outbox_filled"]) else 0


def _print(r: dict[str, Any]) -> None:
    m, c = r["machine"], r["catalog"]
    print(f"machine: {m['processor']} x{m['cpus']}, load {m['load_avg']}, onnxruntime {m['onnxruntime']}, "
          f"usearch {m['usearch']}, {m['mosquitto']}; bundle {r['bundle']}, thresholds {r['thresholds']}")
    print(f"catalog: {c['products']} products, {c['vectors']} vectors ({c['dtype']}), distractors clustered around "
          f"{c['seeds']} (mean cos of random distractor pairs {c['mean_cos_random_pairs']})")
    built = f"CACHED from an earlier run, cached_build_s {c['cached_build_s']}" if c["cached"] \
        else f"built now, build_s {c['build_s']}"
    print(f"catalog build: {built} s ({c['data_dir']})")
    print(f"{'config':12s} {'cams':>4s} {'fps/cam':>7s} {'skip':>5s} {'ttd p50':>7s} {'p95':>6s} {'views':>9s} "
          f"{'frame p50':>9s} {'p95':>6s} {'cpu %':>6s} {'rss MB':>7s} {'gate skip':>9s}")
    rows = [("with_gate", r["with_gate"])] + ([("without_gate", r["without_gate"])] if "without_gate" in r else [])
    rows += [("sweep", x) for x in r.get("sweep", [])]
    for key, x in rows:
        t, fl = x["time_to_decision"], x["frame_latency_ms"]
        print(f"{key:12s} {x['cameras']:4d} {x['fps_sustained']:7.2f} {x['frames_skipped']:5d} {t['p50_ms']!s:>7s} "
              f"{t['p95_ms']!s:>6s} {t['right']:>3d}/{t['views']:<3d}{t['wrong']:>2d}w {fl['p50']!s:>9s} "
              f"{fl['p95']!s:>6s} {x['cpu_percent']:6.1f} {x['rss_mb']:7.1f} {x['gate_skip_ratio']:9.2f}")
    if "max_cameras_sustained" in r:
        print(f"most cameras sustained at {r['sweep'][0]['fps_target']:g} fps: {r['max_cameras_sustained']}")
    o = r["outbox"]
    print(f"outbox insert: synchronous=NORMAL p50 {o['normal']['p50_ms']} ms | FULL p50 {o['full']['p50_ms']} ms "
          f"({o['full_over_normal_p50']}x)")
    if "drill" in r:
        d = r["drill"]
        print(f"drill: SIGKILL with {d['undelivered_at_kill']} undelivered after a {d['outage_s']} s outage: "
              f"decisions {d['decisions']}, received {d['received']} (unique {d['received_unique']}, duplicates "
              f"{d['duplicates']}), lost {d['lost']}, exit {d['exit_code']}")


if __name__ == "__main__":
    sys.exit(main())
