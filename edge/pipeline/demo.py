"""A self-contained demo of the main job: no camera, no data, no broker, no network needed.

1. Render a small catalog of made-up products with OpenCV (distinct colours, shapes, label text).
2. Enroll them into a fresh catalog with the embedded default image encoder — no retraining.
3. Play a virtual kiosk camera: each product held up in turn (random shift, scale, rotation,
   lighting and sensor noise, with an empty tray in between), through the real runtime
   (gate -> embed -> match -> vote -> outbox / MQTT), and print the decisions as they happen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from edge.core.errors import CaptureError, ModelMismatchError
from edge.models.encoders.base import ImageEncoder

SHAPES = ("circle", "square", "triangle", "stripes", "diamond", "ring", "cross", "dots")


@dataclass(frozen=True, slots=True)
class DemoProduct:
    sku: str
    name: str
    colour: tuple[int, int, int]  # BGR
    shape: str


DEMO_PRODUCTS: tuple[DemoProduct, ...] = (
    DemoProduct("DEMO-COLA", "Fizzy Cola 330 ml", (30, 30, 200), "circle"),
    DemoProduct("DEMO-OATS", "Morning Oats 500 g", (60, 170, 220), "square"),
    DemoProduct("DEMO-MINT", "Cool Mint Tea", (90, 180, 40), "triangle"),
    DemoProduct("DEMO-BERRY", "Berry Yoghurt", (140, 40, 150), "stripes"),
    DemoProduct("DEMO-SOAP", "Ocean Soap", (200, 140, 20), "diamond"),
    DemoProduct("DEMO-CHOC", "Dark Chocolate 70%", (30, 50, 90), "ring"),
)


def render_product(p: DemoProduct, *, size: tuple[int, int] = (180, 260)) -> np.ndarray:
    """A package front: coloured box, a white label panel with a shape and the product name."""
    w, h = size
    img = np.full((h, w, 3), p.colour, np.uint8)
    cv2.rectangle(img, (12, 60), (w - 12, h - 40), (245, 245, 245), -1)
    cx, cy, r = w // 2, 60 + (h - 100) // 2, min(w, h - 100) // 3
    dark = tuple(int(c * 0.6) for c in p.colour)
    if p.shape == "circle":
        cv2.circle(img, (cx, cy), r, p.colour, -1)
    elif p.shape == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), p.colour, -1)
    elif p.shape == "triangle":
        cv2.fillPoly(img, [np.array([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], np.int32)], p.colour)
    elif p.shape == "stripes":
        for i in range(-2, 3):
            cv2.rectangle(img, (cx - r, cy + i * r // 2 - 6), (cx + r, cy + i * r // 2 + 6), p.colour, -1)
    elif p.shape == "diamond":
        cv2.fillPoly(img, [np.array([(cx, cy - r), (cx - r, cy), (cx, cy + r), (cx + r, cy)], np.int32)], p.colour)
    elif p.shape == "ring":
        cv2.circle(img, (cx, cy), r, p.colour, 14)
    cv2.circle(img, (cx, cy), max(4, r // 5), dark, -1)
    words = p.name.split()
    cv2.putText(img, words[0].upper(), (14, 42), cv2.FONT_HERSHEY_DUPLEX, 0.9, (255, 255, 255), 2, cv2.LINE_AA)
    cv2.putText(img, " ".join(words[1:])[:16], (14, h - 14), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1,
                cv2.LINE_AA)
    return img


def tray_background(size: tuple[int, int] = (480, 360), seed: int = 7) -> np.ndarray:
    """An empty kiosk tray: a light wood-like gradient with fine texture."""
    w, h = size
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    base = np.stack([150 + 30 * y + 0 * np.ones((1, w)), 175 + 25 * y + 0 * np.ones((1, w)),
                     195 + 20 * y + 0 * np.ones((1, w))], axis=-1)
    grain = rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    return np.clip(base + grain, 0, 255).astype(np.uint8)


def place(background: np.ndarray, product: np.ndarray, rng: np.random.Generator, *, jitter: float = 1.0) -> np.ndarray:
    """The product held over the tray: random shift, scale, small rotation, lighting and sensor noise."""
    frame = background.copy()
    bh, bw = frame.shape[:2]
    scale = 1.0 + jitter * rng.uniform(-0.08, 0.08)
    angle = jitter * rng.uniform(-6, 6)
    ph, pw = product.shape[:2]
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, scale)
    m[:, 2] += [(bw - pw) / 2 + jitter * rng.uniform(-20, 20), (bh - ph) / 2 + jitter * rng.uniform(-15, 15)]
    warped = cv2.warpAffine(product, m, (bw, bh), borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    mask = cv2.warpAffine(np.full((ph, pw), 255, np.uint8), m, (bw, bh)) > 0
    frame[mask] = warped[mask]
    return light_and_noise(frame, rng, jitter=jitter)


def light_and_noise(frame: np.ndarray, rng: np.random.Generator, *, jitter: float = 1.0) -> np.ndarray:
    gain = 1.0 + jitter * rng.uniform(-0.12, 0.12)
    noisy = frame.astype(np.float32) * gain + rng.normal(0, 3.0, frame.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def reference_images(p: DemoProduct, *, n: int = 3, seed: int = 0) -> list[np.ndarray]:
    """What a store would photograph at enrollment: the package on the tray, a few slightly different shots."""
    rng = np.random.default_rng(seed)
    bg = tray_background()
    art = render_product(p)
    return [place(bg, art, rng, jitter=0.5 if i else 0.0) for i in range(n)]


class VirtualCamera:
    """A finite kiosk clip: each product held for ``hold`` frames with ``gap`` frames of empty tray between."""

    def __init__(self, products: tuple[DemoProduct, ...], *, hold: int = 20, gap: int = 30, seed: int = 1) -> None:
        self.products = products
        self.truth: list[str | None] = []  # what was in front of the camera, frame by frame
        self._frames = self._generate(hold, gap, seed)

    def _generate(self, hold: int, gap: int, seed: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed)
        bg = tray_background()
        for p in self.products:
            art = render_product(p)
            for _ in range(gap):
                self.truth.append(None)
                yield light_and_noise(bg, rng, jitter=0.2)
            pose = np.random.default_rng(rng.integers(1 << 30))  # one pose per hold: a hand holding still
            held = place(bg, art, pose)
            for _ in range(hold):
                self.truth.append(p.sku)
                yield light_and_noise(held, rng, jitter=0.1)
        for _ in range(gap):
            self.truth.append(None)
            yield light_and_noise(bg, rng, jitter=0.2)

    def read(self) -> np.ndarray | None:
        try:
            return next(self._frames)
        except StopIteration:
            return None
        except Exception as e:
            raise CaptureError(f"virtual camera failed: {e}") from e

    def close(self) -> None:
        pass


def calibrate_demo(encoder: ImageEncoder, products: tuple[DemoProduct, ...] = DEMO_PRODUCTS) -> tuple[float, float]:
    """(threshold, margin) for the demo's catalog, measured with the encoder it runs (as ``storelens calibrate`` does).

    Fresh shots of each product (another seed than the enrolled ones) must clear the threshold and the
    empty tray must not: the threshold sits midway between the worst fresh shot's score for its own
    product and the empty tray's best score; the margin is half the smallest lead of a fresh shot's
    own product over the next. Measuring beats a fixed number: each encoder has its own cosine scale.
    """
    enrolled = [encoder.embed(reference_images(p)) for p in products]
    own, lead = [], []
    for i, p in enumerate(products):
        for v in encoder.embed(reference_images(p, seed=1)):
            scores = [float((e @ v).max()) for e in enrolled]
            own.append(scores[i])
            lead.append(scores[i] - max(s for j, s in enumerate(scores) if j != i))
    empty = encoder.embed([tray_background()])[0]
    empty_best = max(float((e @ empty).max()) for e in enrolled)
    if min(own) <= empty_best or min(lead) <= 0:
        raise ModelMismatchError(
            f"this image encoder cannot tell the demo's products apart (worst own score {min(own):.2f}, "
            f"empty tray {empty_best:.2f}, smallest lead {min(lead):.2f})",
            hint="use the embedded default bundle (unset model.image_bundle)")
    return round((min(own) + empty_best) / 2, 3), round(min(0.1, min(lead) / 2), 3)
