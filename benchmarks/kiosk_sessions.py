"""Kiosk decision accuracy: sessions played the way the runtime sees them, as a shopper feels them.

    python -m benchmarks.kiosk --root DIR --gallery FILE --queries FILE --json OUT [--threads 1]
        [--photos 3] [--hold 8] [--gap 4] [--fps 15]
    (python -m benchmarks.kiosk_sessions takes the same arguments)

The gallery split is enrolled into a real catalog store (SQLite + USearch i8, mean of a product's
top-3 photos). One session per query photo: the product is held up over the demo's kiosk tray as
``--photos`` distinct photos of it (that photo and the next ones of the same product in the split),
each held still for ``--hold`` frames and placed with the demo's augmentations (random shift, scale,
rotation, lighting; sensor noise on every frame, :mod:`edge.pipeline.demo`), after ``--gap``
frames of the empty tray. Every frame goes through the runtime's own parts: the region gate
(:class:`~edge.pipeline.gate.RegionGate`, the config defaults), the image encoder, the store's
search and the kiosk voter (:class:`~edge.pipeline.vote.RegionVoter`, one event per view) with the
thresholds calibrated on the bundle's sessions carve of the gallery split (never on the queries).

Per session, the first event about the product is what the shopper sees first: ``correct`` (known,
the right product), ``wrong`` (known, another product) or ``unknown`` (an unknown event, or no
event before the session ended). Reported overall and per group (Fruit / Vegetables / Packages),
with the time to that decision: camera time from the product's first frame to the frame decided
(at ``--fps``) plus the embedding and search time of that frame measured here. Every view's own
event is tallied too (``views``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks._gallery import build_store, bundle_dir, calibrate_on_carve, class_names
from benchmarks._results import write_json
from benchmarks.accuracy import Item, load_split, machine
from edge.catalog.store import Store
from edge.core.config import DecisionSettings, GateSettings, ModelSettings
from edge.models.encoders import load_image_encoder
from edge.models.encoders.base import ImageEncoder
from edge.models.preprocess import read_image
from edge.pipeline.demo import light_and_noise, place, tray_background
from edge.pipeline.gate import GateVerdict, RegionGate
from edge.pipeline.vote import RegionVoter, VoteParams

GROUPS = ("Fruit", "Vegetables", "Packages")
PHOTO_PX = 300  # a photo's long side on the 480x360 tray: the product fills most of the kiosk's view


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    product: bool  # the product is on the tray (False: the empty tray before it)


@dataclass(frozen=True)
class Outcome:
    kind: str  # correct | wrong | unknown
    decision_ms: float | None  # None: no event in the session
    frames: int | None
    views: tuple[str, ...]  # each product view's own event: correct | wrong | unknown


def session_photos(items: Sequence[Item], n: int) -> list[list[Item]]:
    """One session per photo: it and the next ``n - 1`` photos of the same product in split order (wrapping)."""
    by: dict[int, list[Item]] = {}
    for it in items:
        by.setdefault(it.label, []).append(it)
    out = []
    for it in items:
        same = by[it.label]
        start = same.index(it)
        out.append([same[(start + j) % len(same)] for j in range(min(n, len(same)))])
    return out


def frames(photos: Sequence[Item], rng: np.random.Generator, *, hold: int, gap: int) -> Iterator[Frame]:
    """The empty tray, then each photo held still (one pose a photo, fresh sensor noise a frame)."""
    bg = tray_background()
    for _ in range(gap):
        yield Frame(light_and_noise(bg, rng, jitter=0.2), product=False)
    for it in photos:
        img = read_image(it.path)
        scale = PHOTO_PX / max(img.shape[:2])
        art = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
        held = place(bg, art, np.random.default_rng(rng.integers(1 << 30)))
        for _ in range(hold):
            yield Frame(light_and_noise(held, rng, jitter=0.1), product=True)


def play(store: Store, enc: ImageEncoder, params: VoteParams, gate: GateSettings, photos: Sequence[Item],
         truth: str, rng: np.random.Generator, *, hold: int, gap: int, fps: float) -> Outcome:
    """One session through a fresh gate and kiosk voter; the first event about the product decides."""
    g = RegionGate(change_threshold=gate.change_threshold, steady_frames=gate.steady_frames,
                   frames_per_view=gate.frames_per_view or params.window, enabled=gate.enabled)
    voter = RegionVoter(camera="kiosk", roi="full", params=params, per_view=True)
    product_views: set[str] = set()
    first_product: int | None = None
    events: list[tuple[int, str, float]] = []  # (frame, kind, compute ms)
    for i, f in enumerate(frames(photos, rng, hold=hold, gap=gap)):
        if f.product and first_product is None:
            first_product = i
        verdict = g.check(f.image)
        if verdict == GateVerdict.NEW_VIEW:
            view = voter.reset()
            if f.product:
                product_views.add(view)
        if not verdict.passes:
            continue
        t0 = time.perf_counter()
        cands = store.match_vectors(enc.embed([f.image]), params.top_k)[0]
        ms = (time.perf_counter() - t0) * 1000
        d = voter.add(cands, ts=i / fps, now=i / fps)
        if d is not None and not d.heartbeat and d.view_id in product_views:
            kind = "unknown" if d.decision == "unknown" else ("correct" if d.sku == truth else "wrong")
            events.append((i, kind, ms))
    if not events or first_product is None:
        return Outcome("unknown", None, None, ())
    i, kind, ms = events[0]
    return Outcome(kind, (i - first_product) / fps * 1000 + ms, i - first_product, tuple(k for _, k, _ in events))


def summarise(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    n = len(outcomes)
    kinds = Counter(o.kind for o in outcomes)
    ms = sorted(o.decision_ms for o in outcomes if o.decision_ms is not None)
    views = Counter(v for o in outcomes for v in o.views)
    nv = sum(views.values())
    return {"sessions": n, **{k: round(kinds[k] / n, 4) if n else None for k in ("correct", "wrong", "unknown")},
            "no_event": sum(o.decision_ms is None for o in outcomes),
            "time_to_decision_ms": {"p50": round(statistics.median(ms), 1) if ms else None,
                                    "p95": round(ms[int(0.95 * (len(ms) - 1))], 1) if ms else None},
            "frames_to_decision_p50": statistics.median([o.frames for o in outcomes if o.frames is not None])
            if ms else None,
            "views": {"events": nv, **{k: round(views[k] / nv, 4) if nv else None
                                       for k in ("correct", "wrong", "unknown")}}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    enc = load_image_encoder(ModelSettings(image_bundle=args.bundle, threads=args.threads))
    names = class_names(args.root)
    with tempfile.TemporaryDirectory(prefix="bench-kiosk-") as tmp:
        work = Path(tmp)
        cal = calibrate_on_carve(args.root, args.gallery, bundle_dir(args.bundle), enc, work, names)
        store = build_store(load_split(args.root, args.gallery), work / "store", enc, names, threads=args.threads)
        try:
            return _sessions(args, enc, store, cal, names)
        finally:
            store.close()


def _sessions(args: argparse.Namespace, enc: ImageEncoder, store: Store, cal: Any,
              names: dict[int, str]) -> dict[str, Any]:
    store.save_calibration(cal)
    params = VoteParams.from_settings(DecisionSettings(), store.thresholds)
    queries = load_split(args.root, args.queries)
    rng = np.random.default_rng(args.seed)
    outcomes: list[tuple[str, Outcome]] = []
    t0 = time.perf_counter()
    for photos in session_photos(queries, args.photos):
        outcomes.append((photos[0].group, play(store, enc, params, GateSettings(), photos, names[photos[0].label],
                                               rng, hold=args.hold, gap=args.gap, fps=args.fps)))
    wall = time.perf_counter() - t0
    return {**summarise([o for _, o in outcomes]),
            "groups": {g: summarise([o for gg, o in outcomes if gg == g]) for g in GROUPS},
            "thresholds": {"score": round(params.threshold, 4), "margin": round(params.margin, 4),
                           "source": params.source, "calibrated_on": "bundle's sessions carve of the gallery split"},
            "vote": {"window": params.window, "min_frames": params.min_frames, "agreement": params.agreement},
            "gate": GateSettings().model_dump(), "photos_per_session": args.photos, "hold_frames": args.hold,
            "gap_frames": args.gap, "fps": args.fps, "seed": args.seed, "gallery": str(args.gallery),
            "queries": str(args.queries), "bundle": enc.fingerprint, "threads": args.threads,
            "wall_s": round(wall, 1), "machine": machine()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kiosk", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="folder the split paths are relative to")
    p.add_argument("--gallery", type=Path, required=True, help="split file enrolled as the catalog (train.txt)")
    p.add_argument("--queries", type=Path, required=True, help="split file the sessions' photos come from")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--bundle", type=Path, default=None, help="image bundle (default: the embedded one)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--photos", type=int, default=3, help="distinct photos of the product a session shows")
    p.add_argument("--hold", type=int, default=8, help="frames each photo is held still")
    p.add_argument("--gap", type=int, default=4, help="frames of the empty tray before the product")
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    res = run(args)
    print(f"{res['sessions']} sessions: correct {res['correct']}, wrong {res['wrong']}, unknown {res['unknown']}; "
          f"time to decision p50 {res['time_to_decision_ms']['p50']} ms, p95 {res['time_to_decision_ms']['p95']} ms")
    for g, v in res["groups"].items():
        print(f"  {g:<11} {v['sessions']:>4} sessions: correct {v['correct']}, wrong {v['wrong']}, "
              f"unknown {v['unknown']}, p50 {v['time_to_decision_ms']['p50']} ms")
    if args.json:
        write_json(args.json, res, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
