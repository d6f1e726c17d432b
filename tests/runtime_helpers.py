"""Real small parts for the runtime tests: an onnxruntime encoder over the tiny ONNX model, a
numpy matcher with a JSON catalog file (reloadable), generated product frames, and a
``python -m tests.runtime_helpers`` entry that runs the real Runtime in a subprocess (so tests
can SIGKILL / SIGTERM it).
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from edge.core.config import load_settings
from edge.core.types import Candidate
from edge.models.preprocess import PreprocessSpec, prepare_batch
from edge.pipeline.factory import assemble_runtime

COLOURS = {  # BGR, far apart so the tiny random encoder separates them
    "RED": (30, 30, 220), "GREEN": (40, 200, 40), "BLUE": (210, 60, 20), "YELLOW": (20, 220, 230),
    "EMPTY": (128, 128, 128),
}


class TinyOnnxEncoder:
    """The tiny ONNX model run by a real onnxruntime session, with edge.models.preprocess at 32 px."""

    def __init__(self, path: Path) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._spec = PreprocessSpec(input_size=32)
        self._fp = hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    @property
    def dim(self) -> int:
        return 16

    @property
    def fingerprint(self) -> str:
        return self._fp

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, 16), np.float32)
        return np.asarray(self._sess.run(None, {"input": prepare_batch(images, self._spec)})[0], np.float32)


class NumpyMatcher:
    """Brute-force cosine search over a JSON catalog file: ``{"version", "items": [{sku, name, vectors}]}``."""

    def __init__(self, path: Path, encoder: TinyOnnxEncoder | None = None) -> None:
        self.path = path
        self.encoder = encoder  # embeds enrolled images, like the real Store
        self.reloads = 0
        self._load()

    def _load(self) -> None:
        data = json.loads(self.path.read_text())
        self._version = str(data["version"])
        self._names = {it["sku"]: it["name"] for it in data["items"]}
        rows = [(it["sku"], v) for it in data["items"] for v in it["vectors"]]
        self._skus = [s for s, _ in rows]
        self._vecs = np.asarray([v for _, v in rows], np.float32).reshape(len(rows), -1)

    @property
    def catalog_version(self) -> str:
        return self._version

    def reload(self) -> None:
        self._load()
        self.reloads += 1

    def match_vectors(self, embs: np.ndarray, k: int) -> list[list[Candidate]]:
        sims = embs @ self._vecs.T if len(self._vecs) else np.zeros((len(embs), 0), np.float32)
        out = []
        for row in sims:
            best: dict[str, float] = {}
            for sku, s in zip(self._skus, row, strict=True):
                best[sku] = max(best.get(sku, -1.0), float(s))
            ranked = sorted(best.items(), key=lambda t: -t[1])[:k]
            out.append([Candidate(s, self._names[s], sc) for s, sc in ranked])
        return out

    def enroll(self, sku: str, *, name: str, images: Sequence[np.ndarray]) -> dict[str, int]:
        assert self.encoder is not None
        vectors = self.encoder.embed(images)
        self._names[sku] = name
        self._skus += [sku] * len(vectors)
        self._vecs = np.concatenate([self._vecs.reshape(-1, vectors.shape[1]), vectors.astype(np.float32)])
        self._version = f"{self._version}+{sku}"
        return {"vectors": len(vectors)}

    def remove(self, sku: str) -> bool:
        keep = [i for i, s in enumerate(self._skus) if s != sku]
        removed = len(self._skus) - len(keep)
        self._skus = [self._skus[i] for i in keep]
        self._vecs = self._vecs[keep]
        self._version = f"{self._version}-{sku}"
        return removed > 0


def product_image(sku: str, *, size: int = 64, rng: np.random.Generator | None = None, shift: int = 0) -> np.ndarray:
    """A flat-coloured product with a white stripe; ``rng`` adds sensor noise."""
    img = np.full((size, size, 3), COLOURS[sku], np.uint8)
    y = size // 3 + shift
    img[y : y + size // 8] = 255
    if rng is not None:
        img = np.clip(img.astype(np.int16) + rng.normal(0, 4, img.shape).astype(np.int16), 0, 255).astype(np.uint8)
    return img


def write_catalog(path: Path, encoder: TinyOnnxEncoder, skus: Sequence[str], *, version: str = "v1") -> Path:
    items = [{"sku": s, "name": s.title(), "vectors": encoder.embed([product_image(s)]).tolist()} for s in skus]
    path.write_text(json.dumps({"version": version, "items": items}))
    return path


def write_frames(folder: Path, skus: Sequence[str], *, per_sku: int, size: int = 64, seed: int = 0) -> Path:
    """An image-folder camera: ``per_sku`` noisy frames of each sku in turn."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    i = 0
    for sku in skus:
        for _ in range(per_sku):
            cv2.imwrite(str(folder / f"{i:05d}.png"), product_image(sku, size=size, rng=rng))
            i += 1
    return folder


def main(argv: list[str]) -> int:
    """``python -m tests.runtime_helpers CONFIG ONNX CATALOG``: the real runtime with the tiny parts."""
    config, onnx_path, catalog = (Path(a) for a in argv[:3])
    settings = load_settings(config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    enc = TinyOnnxEncoder(onnx_path)
    rt = assemble_runtime(settings=settings, encoder=enc, matcher=NumpyMatcher(catalog, enc))
    rt.start()
    try:
        rt.run(stop)
    finally:
        summary = rt.shutdown()
        print("SUMMARY " + json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


class Collector:
    """A real subscriber (paho, MQTT 3.1.1 persistent session) that records what the broker delivers.

    The constructor returns once the broker acknowledged the subscription (SUBACK): anything
    published after that reaches it, with no sleep to guess how long subscribing takes.
    """

    def __init__(self, port: int, topic: str = "#", *, client_id: str = "test-collector") -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._topic = topic
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=False)
        self._subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(self._topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.stop()
            raise TimeoutError(f"the broker on port {port} did not acknowledge the subscription to {topic}")

    def _on_message(self, _c: object, _ud: object, msg: object) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))  # type: ignore[attr-defined]

    def of(self, suffix: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def json_of(self, suffix: str) -> list[dict]:
        return [json.loads(p) for p in self.of(suffix)]

    def wait(self, pred: object, timeout: float = 10.0) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():  # type: ignore[operator]
                return True
            time.sleep(0.02)
        return bool(pred())  # type: ignore[operator]

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def demo_device(tmp_path: Path, *, price: float | None = None) -> tuple[Path, Path]:
    """A real store (embedded bundle) of two demo products in ``tmp_path/data`` and a folder of the virtual camera's
    frames of them in ``tmp_path/frames``: what a `storelens run` test needs. Returns (data dir, frames folder)."""
    from edge.catalog.store import Store
    from edge.models.encoders import load_image_encoder
    from edge.pipeline.demo import DEMO_PRODUCTS, VirtualCamera, reference_images

    data = tmp_path / "data"
    s = load_settings(None, device={"store": "s1", "id": "d1"}, catalog={"data_dir": str(data)})
    store = Store.from_settings(s, image_encoder=load_image_encoder(s.model), text_encoder=None)
    for p in DEMO_PRODUCTS[:2]:
        store.enroll(p.sku, name=p.name, images=reference_images(p), price=price)
    store.close()
    frames = tmp_path / "frames"
    frames.mkdir()
    cam = VirtualCamera(DEMO_PRODUCTS[:2], hold=8, gap=0)
    i = 0
    while (f := cam.read()) is not None:
        cv2.imwrite(str(frames / f"{i:03d}.png"), f)
        i += 1
    return data, frames
