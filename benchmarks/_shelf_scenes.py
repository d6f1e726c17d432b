"""Synthetic shelf days for :mod:`benchmarks.shelf`: a facing's timeline and the frames a fixed camera sees.

A *facing* is one region of a shelf camera's frame, planned for one product (a class of the
split). Its simulated day (:func:`facing_day`) is a list of :class:`Segment` s, each a constant
view of the facing: the planned product's photo (each restock a new photo and pose), the bare
shelf (sold out), another product of the same shelf (put back in the wrong slot), or a shopper
standing in front for a few seconds (an occlusion, over whatever the facing shows). The truth
(:class:`Truth`) is the list of state periods the benchmark scores alerts against.

Views are rendered with the kiosk benchmark's augmentations (:mod:`edge.pipeline.demo`: random
shift, scale, rotation and light per placement, sensor noise on every frame) over a bare-shelf
background (:func:`shelf_background`: a back panel and a shelf lip, one tint per shelf).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from benchmarks.accuracy import Item
from edge.models.preprocess import read_image
from edge.pipeline.demo import light_and_noise, place

FACING_PX = (240, 320)  # w, h of one facing's region in the camera frame
PHOTO_FILL = 0.8  # a product photo's long side as a share of the facing's height


@dataclass(frozen=True)
class DayPlan:
    """The simulated day's rates (means of exponential gaps, uniform durations), in seconds."""

    hours: float = 8.0
    event_gap_s: float = 2400.0  # between sell-outs / misplacements of one facing
    p_empty: float = 0.6  # an event is a sell-out (else a misplacement)
    empty_s: tuple[float, float] = (300.0, 3600.0)
    misplaced_s: tuple[float, float] = (300.0, 2700.0)
    occlusion_gap_s: float = 900.0
    occlusion_s: tuple[float, float] = (2.0, 20.0)  # "a passing shopper for a few seconds"
    quiet_s: float = 10.0  # no occlusion this close to a state change (the truth stays unambiguous)


@dataclass(frozen=True)
class Segment:
    """A constant view from ``start`` to ``end`` (s): ``kind`` ok | empty | misplaced | occluded."""

    start: float
    end: float
    kind: str
    photo: Item | None  # the product shown (None: bare shelf)
    seed: int  # pose and light of this placement
    occluder: int | None = None  # seed of the shopper in front (occluded segments)


@dataclass(frozen=True)
class Truth:
    """A state period of a facing: ``kind`` empty | misplaced | ok (ok: back on shelf after one of them)."""

    kind: str
    start: float
    end: float


def shelf_background(seed: int) -> np.ndarray:
    """A bare facing: a dim back panel with vertical grain and the shelf's lip at the bottom (BGR)."""
    w, h = FACING_PX
    rng = np.random.default_rng(seed)
    tint = rng.uniform(70, 150, 3)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    panel = tint[None, None, :] * (0.75 + 0.35 * y) + rng.normal(0, 4, (1, w, 1))
    img = np.broadcast_to(panel, (h, w, 3)).copy()
    lip = int(h * 0.9)
    img[lip:] = rng.uniform(180, 230, 3)
    img[lip:lip + 3] = 40
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def _fit(photo: np.ndarray) -> np.ndarray:
    h = FACING_PX[1]
    scale = PHOTO_FILL * h / max(photo.shape[:2])
    return cv2.resize(photo, (max(1, round(photo.shape[1] * scale)), max(1, round(photo.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA)


_PHOTOS: dict[str, np.ndarray] = {}


def view(seg: Segment, background: np.ndarray) -> np.ndarray:
    """The segment's view without sensor noise: the placed photo (or bare shelf), with the shopper if any."""
    rng = np.random.default_rng(seg.seed)
    if seg.photo is None:
        img = light_and_noise(background, rng, jitter=0.5)
    else:
        key = str(seg.photo.path)
        if key not in _PHOTOS:
            if len(_PHOTOS) > 512:
                _PHOTOS.clear()
            _PHOTOS[key] = _fit(read_image(seg.photo.path))
        img = place(background, _PHOTOS[key], rng)
    if seg.occluder is not None:
        img = shopper(img, seg.occluder)
    return img


def shopper(img: np.ndarray, seed: int) -> np.ndarray:
    """A shopper's body in front of the facing: a textured coat covering 40-100% of it from one side."""
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    out = img.copy()
    cover = int(w * rng.uniform(0.4, 1.0))
    x0 = 0 if rng.random() < 0.5 else w - cover
    coat = rng.uniform(20, 220, 3)
    texture = rng.normal(0, 12, (h, cover, 1)) + np.linspace(-25, 25, h)[:, None, None]
    out[:, x0:x0 + cover] = np.clip(coat + texture, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:  # an arm reaching across
        y = int(h * rng.uniform(0.2, 0.7))
        cv2.rectangle(out, (0, y), (w - 1, y + h // 10), tuple(float(v) for v in rng.uniform(120, 200, 3)), -1)
    return out


def frame(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One camera frame of a view: a little light flicker and fresh sensor noise."""
    return light_and_noise(img, rng, jitter=0.1)


def facing_day(planned: Sequence[Item], others: Sequence[Item], plan: DayPlan,
               rng: np.random.Generator) -> tuple[list[Segment], list[Truth], list[tuple[float, float]]]:
    """A facing's day: its segments, the truth periods and the occlusions ``(start, end)``."""
    end_of_day = plan.hours * 3600
    states: list[tuple[float, str, Item | None]] = [(0.0, "ok", planned[int(rng.integers(len(planned)))])]
    t = 0.0
    while True:
        t += rng.exponential(plan.event_gap_s)
        empty = rng.random() < plan.p_empty
        lo, hi = plan.empty_s if empty else plan.misplaced_s
        back = t + rng.uniform(lo, hi)
        if back >= end_of_day - 600:
            break
        kind = "empty" if empty else "misplaced"
        states.append((t, kind, None if empty else others[int(rng.integers(len(others)))]))
        states.append((back, "ok", planned[int(rng.integers(len(planned)))]))
        t = back
    segments = [Segment(s, e, k, p, int(rng.integers(1 << 30)))
                for (s, k, p), (e, _, _) in zip(states, [*states[1:], (end_of_day, "", None)], strict=True)]
    return _with_occlusions(segments, plan, rng, end_of_day)


def _with_occlusions(segments: list[Segment], plan: DayPlan, rng: np.random.Generator, end_of_day: float
                     ) -> tuple[list[Segment], list[Truth], list[tuple[float, float]]]:
    """Shoppers in front at random times, away from the state changes; each cuts its segment in three."""
    truth_changes = [s.start for s in segments[1:]]
    occlusions: list[tuple[float, float]] = []
    t = rng.exponential(plan.occlusion_gap_s)
    while t < end_of_day - 60:
        d = rng.uniform(*plan.occlusion_s)
        if all(abs(c - t) > plan.quiet_s + d and abs(c - (t + d)) > plan.quiet_s for c in truth_changes):
            occlusions.append((t, t + d))
        t += d + rng.exponential(plan.occlusion_gap_s)
    out: list[Segment] = []
    for seg in segments:
        start = seg.start
        for o0, o1 in occlusions:
            if seg.start < o0 < seg.end:
                out.append(Segment(start, o0, seg.kind, seg.photo, seg.seed))
                out.append(Segment(o0, o1, "occluded", seg.photo, seg.seed, int(rng.integers(1 << 30))))
                start = o1
        out.append(Segment(start, seg.end, seg.kind, seg.photo, seg.seed))
    truth = [Truth(k, s, e) for k, s, e in _truth(segments)]
    return out, truth, occlusions


def _truth(segments: list[Segment]) -> list[tuple[str, float, float]]:
    """Each empty / misplaced period, and each ok period that follows one (back on shelf)."""
    out = []
    for i, seg in enumerate(segments):
        if seg.kind != "ok" or (i > 0 and segments[i - 1].kind != "ok"):
            out.append((seg.kind, seg.start, seg.end))
    return out
