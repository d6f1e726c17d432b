"""Kiosk decision accuracy: items played the way the runtime sees them, as a shopper feels them.

    python -m benchmarks.kiosk --root DIR --gallery FILE --queries FILE --json OUT [--threads 1]
        [--max-wrong 0.02] [--views 1-3] [--hold 8] [--gap 4] [--fps 15] [--candidates 4]
    (python -m benchmarks.kiosk_sessions takes the same arguments)

The gallery split is enrolled into a real catalog store (SQLite + USearch i8, mean of a product's
top-3 photos), with the empty tray as the catalog's ``EMPTY`` entry (``decision.empty_sku``). One
session per query photo: the empty tray for ``--gap`` frames, then the product shown as 1 to 3
*views* (the shopper turning it: that photo and the next ones of the same product in the split,
the count drawn per session from ``--views``), each held still for ``--hold`` frames and placed
with the demo's augmentations (shift, scale, rotation, lighting; sensor noise on every frame,
:mod:`edge.pipeline.demo`), then the empty tray again. Every frame goes through the runtime's own
parts: the region gate (:class:`~edge.pipeline.gate.RegionGate`, the config defaults), the image
encoder, the store's search and the kiosk's item voter (:class:`~edge.pipeline.item.ItemVoter`:
views pooled into one item) with the thresholds ``storelens calibrate --max-wrong`` chooses on the
bundle's sessions carve of the gallery split (never on the queries).

Per session: ``correct`` — the item's final answer names the right product; ``wrong`` — any known
answer shown during the session named another product (so a session can be both: wrong first,
right at the end); ``unknown`` — the final answer is unknown (or no answer came); ``picklist_hit``
— the right product was named or among the ``--candidates`` cards the screen shows at the end
("Not this product?" under a known answer, the cards of an unknown one); ``time_to_first_answer``
— camera time from the product's first frame to the frame of the first answer (known or unknown,
at ``--fps``) plus that frame's embedding and search time; ``items_published`` — distinct
``item_id`` of the session's messages (one item is right). Reported overall and per group (Fruit /
Vegetables / Packages).
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
from edge.catalog.calibration import DEFAULT_MAX_WRONG
from edge.catalog.store import Store
from edge.core.config import DecisionSettings, GateSettings, ModelSettings
from edge.core.ops_settings import KioskScreenSettings
from edge.models.encoders import load_image_encoder
from edge.models.encoders.base import ImageEncoder
from edge.models.preprocess import read_image
from edge.pipeline.demo import light_and_noise, place, tray_background
from edge.pipeline.gate import GateVerdict, RegionGate
from edge.pipeline.item import ItemVoter
from edge.pipeline.vote import Decision, VoteParams

GROUPS = ("Fruit", "Vegetables", "Packages")
EMPTY_SKU = DecisionSettings().empty_sku
PHOTO_PX = 300  # a photo's long side on the 480x360 tray: the product fills most of the kiosk's view


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    product: bool  # the product is on the tray (False: the empty tray before it)


@dataclass(frozen=True)
class Outcome:
    correct: bool  # the final answer names the right product
    wrong: bool  # a known answer during the session named another product
    unknown: bool  # the final answer is unknown, or there was none
    picklist_hit: bool  # the right product named or among the cards at the end
    first_answer_ms: float | None  # None: no answer in the session
    items: int  # distinct item ids published
    views: int  # views the session showed


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
    """The empty tray, each photo held still (one pose a photo, fresh sensor noise a frame), the empty tray."""
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
    for _ in range(hold):
        yield Frame(light_and_noise(bg, rng, jitter=0.2), product=False)


def empty_tray_images(n: int = 4, seed: int = 5) -> list[np.ndarray]:
    """Photos of the empty tray, enrolled as the catalog's ``EMPTY`` entry (as a store does at set-up)."""
    rng = np.random.default_rng(seed)
    return [light_and_noise(tray_background(), rng, jitter=0.3) for _ in range(n)]


def play(store: Store, enc: ImageEncoder, params: VoteParams, gate: GateSettings, photos: Sequence[Item],
         truth: str, rng: np.random.Generator, *, hold: int, gap: int, fps: float, candidates: int) -> Outcome:
    """One session through a fresh gate and kiosk item voter, as the screen and MQTT would see it."""
    g = RegionGate(change_threshold=gate.change_threshold, steady_frames=gate.steady_frames,
                   frames_per_view=gate.frames_per_view or params.window, enabled=gate.enabled)
    voter = ItemVoter(camera="kiosk", roi="full", params=params)
    first_product: int | None = None
    said: list[tuple[int, Decision, float]] = []  # (frame, item decision, compute ms)
    for i, f in enumerate(frames(photos, rng, hold=hold, gap=gap)):
        if f.product and first_product is None:
            first_product = i
        verdict = g.check(f.image)
        if verdict == GateVerdict.NEW_VIEW:
            voter.reset()
        if not verdict.passes:
            continue
        t0 = time.perf_counter()
        cands = store.match_vectors(enc.embed([f.image]), params.top_k)[0]
        ms = (time.perf_counter() - t0) * 1000
        said += [(i, d, ms) for d in voter.add(cands, ts=i / fps, now=i / fps) if d.item_id and not d.heartbeat]
    if not said or first_product is None:
        return Outcome(False, False, True, False, None, 0, len(photos))
    last = said[-1][1]
    shown = [c.sku for c in last.candidates]
    cards = shown[1 : 1 + candidates] if last.decision == "known" else shown[:candidates]
    i, _, ms = said[0]
    return Outcome(correct=last.sku == truth, wrong=any(d.decision == "known" and d.sku != truth for _, d, _ in said),
                   unknown=last.decision == "unknown", picklist_hit=last.sku == truth or truth in cards,
                   first_answer_ms=(i - first_product) / fps * 1000 + ms, items=len({d.item_id for _, d, _ in said}),
                   views=len(photos))


def summarise(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    n = len(outcomes)
    share = lambda xs: round(sum(xs) / n, 4) if n else None  # noqa: E731
    ms = sorted(o.first_answer_ms for o in outcomes if o.first_answer_ms is not None)
    items = Counter(o.items for o in outcomes)
    return {"sessions": n, "correct": share(o.correct for o in outcomes), "wrong": share(o.wrong for o in outcomes),
            "unknown": share(o.unknown for o in outcomes), "picklist_hit": share(o.picklist_hit for o in outcomes),
            "no_answer": sum(o.first_answer_ms is None for o in outcomes),
            "time_to_first_answer_ms": {"p50": round(statistics.median(ms), 1) if ms else None,
                                        "p95": round(ms[int(0.95 * (len(ms) - 1))], 1) if ms else None},
            "items_published": {str(k): v for k, v in sorted(items.items())},
            "views": {str(k): v for k, v in sorted(Counter(o.views for o in outcomes).items())}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    enc = load_image_encoder(ModelSettings(image_bundle=args.bundle, threads=args.threads))
    names = class_names(args.root)
    with tempfile.TemporaryDirectory(prefix="bench-kiosk-") as tmp:
        work = Path(tmp)
        cal = calibrate_on_carve(args.root, args.gallery, bundle_dir(args.bundle), enc, work, names,
                                 max_wrong=args.max_wrong)
        store = build_store(load_split(args.root, args.gallery), work / "store", enc, names, threads=args.threads)
        store.enroll(EMPTY_SKU, name="Empty tray", images=empty_tray_images())
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
    lo, hi = (int(x) for x in args.views.split("-")) if "-" in args.views else (int(args.views),) * 2
    counts = np.random.default_rng(args.seed + 1).integers(lo, hi + 1, len(queries))
    for photos, k in zip(session_photos(queries, hi), counts, strict=True):
        outcomes.append((photos[0].group, play(store, enc, params, GateSettings(), photos[:k],
                                               names[photos[0].label], rng, hold=args.hold, gap=args.gap,
                                               fps=args.fps, candidates=args.candidates)))
    wall = time.perf_counter() - t0
    return {**summarise([o for _, o in outcomes]),
            "groups": {g: summarise([o for gg, o in outcomes if gg == g]) for g in GROUPS},
            "thresholds": {"score": round(params.threshold, 4), "margin": round(params.margin, 4),
                           "source": params.source, "max_wrong": args.max_wrong, "risk_on_carve": cal.risk,
                           "calibrated_on": "bundle's sessions carve of the gallery split"},
            "vote": {"window": params.window, "min_frames": params.min_frames, "agreement": params.agreement},
            "gate": GateSettings().model_dump(), "views_per_session": args.views, "hold_frames": args.hold,
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
    p.add_argument("--views", default="1-3", help="views (distinct photos) of the product a session shows: N or "
                   "LO-HI, drawn per session (1-3)")
    p.add_argument("--max-wrong", type=float, default=DEFAULT_MAX_WRONG,
                   help=f"calibration's target share of wrong answers, chosen on the carve ({DEFAULT_MAX_WRONG})")
    p.add_argument("--candidates", type=int, default=KioskScreenSettings().candidates,
                   help="cards the screen shows (kiosk_screen.candidates)")
    p.add_argument("--hold", type=int, default=8, help="frames each photo is held still")
    p.add_argument("--gap", type=int, default=4, help="frames of the empty tray before the product")
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    res = run(args)
    t = res["thresholds"]
    print(f"thresholds (calibrate --max-wrong {t['max_wrong']} on the carve): score {t['score']}, margin {t['margin']}")
    print(f"{'':<12}{'sessions':>9}{'correct':>9}{'wrong':>7}{'unknown':>9}{'picklist':>9}{'first p50':>11}")
    for g, v in [("all", res), *res["groups"].items()]:
        print(f"{g:<12}{v['sessions']:>9}{v['correct']:>9}{v['wrong']:>7}{v['unknown']:>9}{v['picklist_hit']:>9}"
              f"{v['time_to_first_answer_ms']['p50']:>9} ms")
    print(f"items published per session: {res['items_published']}")
    if args.json:
        write_json(args.json, res, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
