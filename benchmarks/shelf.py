"""Shelf availability: do a shelf camera's alerts mean something? Synthetic shelf days from real photos.

    nice -n 10 python -m benchmarks.shelf --root R --gallery R/train.txt --queries R/val.txt \\
        [--config configs/shelf-camera.toml] [--hours 8] [--json OUT]

One facing per product of the queries split, six to a shelf (neighbouring classes: look-alikes
side by side), each the region of a fixed camera played at the shelf config's fps over a
simulated day (:mod:`benchmarks._shelf_scenes`): products sell out and are restocked, are put
back in the wrong slot (another product of the same shelf) and fixed, and shoppers stand in
front for 2-20 s. Every frame goes through the runtime's parts: the region gate (the config's
``[gate]``; a steady view stops being embedded, as in the runtime, so a view is embedded only
while it changes or its vote window fills), the image encoder, the store's search, the shelf
voter (``[decision]``, with the ``[shelf]`` planogram prior) and the alert tracker
(:class:`~edge.shelf.alerts.FacingTracker`, ``shelf.alert_after_s``).

The gallery split is enrolled into a real store (SQLite + USearch i8) with photos of each
shelf's bare facings as ``EMPTY``, and (unless ``--no-setup-enroll``) each facing's first frame of the
day as a photo of its planned product, as ``storelens shelf setup --enroll`` does; restocks show other
photos of the product. The gate remembers ``shelf.remember_views`` views, as the runtime's does.
``alert_after_s`` and the prior are chosen on the
bundle's sessions carve of the gallery (a store of the gallery minus the carve, scenes from the
carve's photos; thresholds calibrated the same way); the queries split only reports.

Scored per event kind: an ``empty`` / ``misplaced`` alert is right when the state it reports began
during a true period of that kind (the first one per period; repeats are false alerts); ``ok``
is an alert's clear when the facing is back on shelf. Time to alert: from the true change to the
alert. False alerts per facing-hour: alerts that match no period. Occlusion alerts: alerts whose
state began while a shopper stood in front.
"""

from __future__ import annotations

import argparse
import math
import pickle
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks._gallery import build_store, bundle_dir, carve, class_names
from benchmarks._results import write_json
from benchmarks._shelf_scenes import DayPlan, Segment, Truth, facing_day, frame, shelf_background, view
from benchmarks.accuracy import Item, load_split, machine
from edge.catalog.calibration import run_calibration
from edge.catalog.importers.tables import ProductRecord
from edge.catalog.store import Store
from edge.core.config import Settings, load_settings
from edge.core.types import Candidate
from edge.models.encoders import load_image_encoder
from edge.models.encoders.base import ImageEncoder
from edge.pipeline.gate import GateVerdict, RegionGate
from edge.pipeline.vote import PlanogramPrior, RegionVoter, VoteParams
from edge.shelf.alerts import FacingTracker

SHELF_FACINGS = 6
EMPTY_SKU = "EMPTY"
HOLDS = (10.0, 15.0, 20.0, 30.0, 45.0, 60.0)
# The prior's grid (refined 2026-12-06: the carve's best was 0.942 on the coarser one; 0.125, 0.15, 0.3, 0.4 added)
GAPS: tuple[float | None, ...] = (None, 0.05, 0.1, 0.125, 0.15, 0.2)  # None: no planogram prior (frame_label only)
BELOWS = (0.0, 0.1, 0.2, 0.3, 0.4)  # how far under the threshold the planned product may score
OTHERS: tuple[float | None, ...] = (None, 0.1, 0.2, 0.3, 0.4)  # ... and another product (or the bare shelf)
SINCE_SLACK_S = 5.0  # an alert's state may begin this long before the true change (the vote's window)
STEPS_FORMAT = 2  # the recorded steps' layout (record()); a cache of another layout is played again
STEADY_SKIP = 2  # unchanged verdicts in a row after which the rest of a steady view is skipped (gate skips it)


@dataclass
class Tally:
    alerts: int = 0
    right: int = 0
    periods: int = 0
    found: int = 0
    times: list[float] = field(default_factory=list)


@dataclass
class Facing:
    name: str
    sku: str
    segments: list[Segment]
    truth: list[Truth]
    occlusions: list[tuple[float, float]]
    steps: list[tuple[float, str | None, list[Candidate] | None]]  # see record()


def facings_for(items: Sequence[Item], names: dict[int, str], plan: DayPlan, seed: int) -> list[Facing]:
    """One facing per class of ``items`` (sorted), six to a shelf; the day of each."""
    by: dict[int, list[Item]] = {}
    for it in items:
        by.setdefault(it.label, []).append(it)
    labels = sorted(by)
    out = []
    for i, lab in enumerate(labels):
        shelf = labels[i - i % SHELF_FACINGS: i - i % SHELF_FACINGS + SHELF_FACINGS]
        others = [it for other in shelf if other != lab for it in by[other]] or \
            [it for other in labels if other != lab for it in by[other]]
        segs, truth, occ = facing_day(by[lab], others, plan, np.random.default_rng([seed, lab]))
        out.append(Facing(f"s{i // SHELF_FACINGS}-f{i % SHELF_FACINGS}", names[lab], segs, truth, occ, []))
    return out


def enroll_empty(store: Store, n_shelves: int, folder: Path) -> None:
    """Photos of each shelf's bare facing (what a store photographs at setup) as the ``EMPTY`` product."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(99)
    paths = []
    for s in range(n_shelves):
        for j in range(2):
            p = folder / f"empty-{s}-{j}.png"
            cv2.imwrite(str(p), frame(view(Segment(0, 1, "empty", None, int(rng.integers(1 << 30))),
                                           shelf_background(s)), rng))
            paths.append(p)
    store.import_records([ProductRecord(sku=EMPTY_SKU, name="empty shelf", images=tuple(paths), source="benchmark")],
                         progress=False)


def enroll_setup(facings: Sequence[Facing], store: Store, enc: ImageEncoder, settings: Settings, seed: int) -> None:
    """``storelens shelf setup --enroll`` at the start of the day: each facing's first camera frame (its planned
    product, stocked) becomes a photo of its planned product, through the same :func:`enroll_facings` path."""
    from edge.catalog.learning import Learner

    learner = Learner(store, settings.learning)
    for f in facings:
        rng = np.random.default_rng([seed, zlib.crc32(f.name.encode()), 1])
        img = frame(view(f.segments[0], shelf_background(int(f.name.split("-")[0][1:]))), rng)
        learner.learn(f.sku, img, source="shelf-setup", ref=f.name, hold=False)


def record(f: Facing, store: Store, enc: ImageEncoder, settings: Settings, fps: float, seed: int) -> int:
    """Play the facing's day through the gate and embed what it lets through; returns frames seen.

    Steps: ``(ts, key, candidates)``; a new view carries its key, another frame of it None; a view the gate
    remembered coming back is ``(ts, key, None)``, and its frames follow (the replay uses them only when its
    voter had no decision to bring back, as the runtime then votes it anew)."""
    g, d = settings.gate, settings.decision
    gate = RegionGate(change_threshold=g.change_threshold, steady_frames=0,
                      frames_per_view=g.frames_per_view or d.window, enabled=g.enabled,
                      remember=settings.shelf.remember_views)
    rng = np.random.default_rng([seed, zlib.crc32(f.name.encode())])
    background = shelf_background(int(f.name.split("-")[0][1:]))
    seen = views = 0
    for seg in f.segments:
        img = view(seg, background)
        batch: list[tuple[float, str | None, np.ndarray]] = []
        steady = 0
        for k in range(math.ceil(seg.start * fps), math.ceil(seg.end * fps)):
            crop = frame(img, rng)
            seen += 1
            verdict = gate.check(crop)
            if verdict == GateVerdict.RETURNED:
                f.steps.append((k / fps, gate.returned_key, None))
                key = gate.returned_key
                gate.revote()
                gate.view_key = key
            elif verdict.passes:
                if verdict == GateVerdict.NEW_VIEW:
                    views += 1
                    gate.view_key = f"v{views}"
                batch.append((k / fps, gate.view_key if verdict == GateVerdict.NEW_VIEW else None, crop))
                steady = 0
            elif (steady := steady + 1) >= STEADY_SKIP:
                break  # a steady view: the runtime's gate skips every further frame of it
        if batch:
            found = store.match_vectors(enc.embed([c for _, _, c in batch]), d.top_k)
            f.steps += [(ts, key, list(c)) for (ts, key, _), c in zip(batch, found, strict=True)]
    return seen


def replay(f: Facing, params: VoteParams, prior: PlanogramPrior | None, hold: float, end: float
           ) -> tuple[list[tuple[str, float, float]], list[tuple[float, float]]]:
    """The facing's alerts ``(state, since, opened)`` and ok-clears ``(since, at)`` under the planogram prior
    and ``hold``."""
    voter = RegionVoter(camera="shelf", roi=f.name, params=params, expected_sku=f.sku, prior=prior)
    tr = FacingTracker(camera="shelf", facing=f.name, expected_sku=f.sku, alert_after_s=hold)
    opens: list[tuple[str, float, float]] = []
    clears: list[tuple[float, float]] = []

    def tick_until(t: float) -> None:
        while (due := tr.next_due()) is not None and due <= t:
            for e in tr.tick(due):
                if e.kind == "open":
                    opens.append((e.alert.state, e.alert.since, e.ts))
                elif tr.confirmed == "ok":
                    clears.append((e.ts - hold, e.ts))

    ids: dict[str, str] = {}  # the gate's view keys -> this voter's view ids
    recalled = False
    for ts, key, cands in f.steps:
        tick_until(ts)
        if cands is None:  # a remembered view came back
            assert key is not None
            try:
                dec, recalled = voter.recall(ids[key], ts=ts, now=ts), True
            except KeyError:
                dec, recalled, ids[key] = None, False, voter.reset()
        else:
            if key is not None:
                ids[key], recalled = voter.reset(), False
            if recalled:
                continue  # its decision came back: the runtime embeds none of its frames
            dec = voter.add(cands, ts=ts, now=ts)
        if dec is not None and dec.planogram is not None:
            tr.observe(dec.planogram, dec.ts, observed_sku=dec.sku)
    tick_until(end)
    return opens, clears


def score(facings: Sequence[Facing], params: VoteParams, prior: PlanogramPrior | None, hold: float,
          hours: float) -> dict[str, Any]:
    """Precision, recall and time to alert per kind; false alerts per facing-hour; occlusion alerts."""
    tally = {k: Tally() for k in ("empty", "misplaced", "ok")}
    false = occluded = 0
    for f in facings:
        opens, clears = replay(f, params, prior, hold, hours * 3600)
        events = [(s, since, at) for s, since, at in opens if s in ("empty", "misplaced")] + \
            [("ok", since, at) for since, at in clears]
        alerted = {t.start for t in f.truth if t.kind != "ok"}
        matched: set[tuple[str, float]] = set()
        for kind, since, at in events:
            t = tally[kind]
            t.alerts += 1
            hit = next((p for p in f.truth if p.kind == kind and p.start - SINCE_SLACK_S <= since < p.end
                        and (kind, p.start) not in matched), None)
            if hit is not None:
                matched.add((kind, hit.start))
                t.right += 1
                t.times.append(at - hit.start)
                if kind != "ok":
                    alerted.add(hit.end)
            elif kind != "ok":
                false += 1
                occluded += any(o0 - 1 <= since <= o1 + SINCE_SLACK_S for o0, o1 in f.occlusions)
        for p in f.truth:  # ok periods count when the period before them was alerted
            if p.kind != "ok" or p.start in alerted:
                tally[p.kind].periods += 1
                tally[p.kind].found += (p.kind, p.start) in matched
    out: dict[str, Any] = {}
    for kind, t in tally.items():
        out[f"{kind}_precision"] = round(t.right / t.alerts, 4) if t.alerts else None
        out[f"{kind}_recall"] = round(t.found / t.periods, 4) if t.periods else None
        out[f"{kind}_counts"] = {"alerts": t.alerts, "right": t.right, "periods": t.periods, "found": t.found}
        out[f"{kind}_time_s"] = _pcts(t.times)
    times = tally["empty"].times + tally["misplaced"].times
    return {**out, "time_to_alert_s": _pcts(times), "false_alerts": false,
            "false_alerts_per_facing_hour": round(false / (len(facings) * hours), 4), "occlusion_alerts": occluded}


def _pcts(values: list[float]) -> dict[str, float | None]:
    v = sorted(values)
    return {"p50": round(statistics.median(v), 1) if v else None,
            "p95": round(v[min(len(v) - 1, int(0.95 * len(v)))], 1) if v else None}


def meets(r: dict[str, Any], hold: float) -> bool:
    """The issue's bar: empty/misplaced P and R >= 0.95, false <= 0.05/facing-h, p95 <= hold + 10 s, no occlusion."""
    pr = [r[f"{k}_{m}"] or 0.0 for k in ("empty", "misplaced") for m in ("precision", "recall")]
    p95 = r["time_to_alert_s"]["p95"]
    return min(pr) >= 0.95 and r["false_alerts_per_facing_hour"] <= 0.05 and r["occlusion_alerts"] == 0 \
        and p95 is not None and p95 <= hold + 10


def choose(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The carve's choice: the shortest hold that meets the bar (then the best worst P/R); when none does,
    no occlusion alerts first, then the best worst P/R, the fewest false alerts, the shortest hold."""
    def worst(r: dict[str, Any]) -> float:
        return min(r[f"{k}_{m}"] or 0.0 for k in ("empty", "misplaced") for m in ("precision", "recall"))

    ok = [r for r in grid if r["meets"]]
    if ok:
        return min(ok, key=lambda r: (r["alert_after_s"], -worst(r)))
    return min(grid, key=lambda r: (r["occlusion_alerts"] > 0, -worst(r), r["false_alerts_per_facing_hour"],
                                    r["alert_after_s"]))


def play_split(items: list[Item], store: Store, enc: ImageEncoder, settings: Settings, names: dict[int, str],
               plan: DayPlan, seed: int, work: Path, limit: int | None = None, setup_enroll: bool = True
               ) -> tuple[list[Facing], dict[str, Any]]:
    """Facings of ``items``, their bare shelves enrolled as EMPTY (and with ``setup_enroll`` their setup
    snapshots as photos of the planned products), every day played and embedded."""
    facings = facings_for(items, names, plan, seed)[:limit]
    enroll_empty(store, math.ceil(len(facings) / SHELF_FACINGS), work)
    if setup_enroll:
        enroll_setup(facings, store, enc, settings, seed)
    fps = settings.cameras[0].fps if settings.cameras else 2.0
    t0, seen = time.perf_counter(), 0
    for i, f in enumerate(facings):
        seen += record(f, store, enc, settings, fps, seed)
        print(f"  facing {i + 1}/{len(facings)}: {len(f.steps)} embedded", file=sys.stderr, flush=True)
    embedded = sum(len(f.steps) for f in facings)
    return facings, {"facings": len(facings), "camera_frames": round(len(facings) * plan.hours * 3600 * fps),
                     "frames_rendered": seen, "embedded": embedded, "fps": fps,
                     "wall_s": round(time.perf_counter() - t0, 1)}


def embed_carve(args: argparse.Namespace, settings: Settings, plan: DayPlan) -> dict[str, Any]:
    """The carve's days (a store of the gallery minus the carve, scenes of the carve) and its thresholds."""
    enc = load_image_encoder(settings.model.model_copy(update={"image_bundle": args.bundle, "threads": args.threads}))
    names = class_names(args.root)
    with tempfile.TemporaryDirectory(prefix="bench-shelf-") as tmp:
        work = Path(tmp)
        keep, held = carve(args.root, args.gallery, bundle_dir(args.bundle))
        store = build_store(keep, work / "carve-store", enc, names, threads=args.threads)
        cal, _ = run_calibration(store, [(it.path, names[it.label]) for it in held], progress=False)
        store.save_calibration(cal)  # storelens calibrate's thresholds, on the carve (before EMPTY joins)
        params = VoteParams.from_settings(settings.decision, store.thresholds)
        facings, run_ = play_split(held, store, enc, settings, names, plan, args.seed, work / "empty", args.facings,
                                   args.setup_enroll)
        store.close()
    return {"facings": facings, "params": params, "run": run_, "bundle": enc.fingerprint}


def embed_val(args: argparse.Namespace, settings: Settings, plan: DayPlan) -> dict[str, Any]:
    """The queries split's days on a store of the whole gallery (search does not depend on the thresholds)."""
    enc = load_image_encoder(settings.model.model_copy(update={"image_bundle": args.bundle, "threads": args.threads}))
    names = class_names(args.root)
    with tempfile.TemporaryDirectory(prefix="bench-shelf-") as tmp:
        work = Path(tmp)
        store = build_store(load_split(args.root, args.gallery), work / "store", enc, names, threads=args.threads)
        facings, run_ = play_split(load_split(args.root, args.queries), store, enc, settings, names, plan,
                                   args.seed + 1, work / "empty", args.facings, args.setup_enroll)
        store.close()
    return {"facings": facings, "run": run_, "bundle": enc.fingerprint}


def _cache_key(args: argparse.Namespace) -> str:
    return repr((str(args.gallery), str(args.queries), str(args.bundle), str(args.config), args.hours, args.seed,
                 args.facings, args.setup_enroll, STEPS_FORMAT))


def cached_phase(args: argparse.Namespace, phase: str, settings: Settings, plan: DayPlan) -> dict[str, Any]:
    """One phase's embedded days: from ``<cache>.<phase>.pkl`` when it holds these arguments, else played
    (and kept there). Two processes may play the two phases at once (``--only``)."""
    path = None if args.cache is None else args.cache.with_suffix(f".{phase}.pkl")
    if path is not None and path.is_file():
        with path.open("rb") as fh:
            got = pickle.load(fh)  # our own file, written below
        if got.get("key") == _cache_key(args):
            return dict(got["days"])
    days = (embed_carve if phase == "carve" else embed_val)(args, settings, plan)
    if path is not None:
        with path.open("wb") as fh:
            pickle.dump({"key": _cache_key(args), "days": days}, fh)
    return days


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    settings = load_settings(args.config)
    plan = DayPlan(hours=args.hours)
    if args.only is not None:
        cached_phase(args, args.only, settings, plan)
        return None
    carve_days = cached_phase(args, "carve", settings, plan)
    val_days = cached_phase(args, "val", settings, plan)
    params = carve_days["params"]
    grid = score_grid(carve_days["facings"], params, plan)
    chosen = choose(grid)
    hold = chosen["alert_after_s"]
    prior = None if chosen["planned_gap"] is None else \
        PlanogramPrior(chosen["planned_gap"], chosen["planned_below"], chosen["other_below"])
    val = score(val_days["facings"], params, prior, hold, plan.hours)
    ceiling = choose(score_grid(val_days["facings"], params, plan))
    return {**val, "meets": meets(val, hold), "alert_after_s": hold, **_prior_dict(prior),
            "chosen_on": "bundle's sessions carve of the gallery split",
            "carve_choice": chosen, "carve_grid": grid,
            "ceiling": {**ceiling, "chosen_on": CEILING}, "carve_run": carve_days["run"], "val_run": val_days["run"],
            "thresholds": {"score": round(params.threshold, 4), "margin": round(params.margin, 4)},
            "decision": {k: getattr(settings.decision, k) for k in ("window", "min_frames", "agreement")},
            "gate": settings.gate.model_dump(), "plan": plan.__dict__, "seed": args.seed,
            "gallery": str(args.gallery), "queries": str(args.queries), "bundle": val_days["bundle"],
            "setup_enroll": args.setup_enroll, "remember_views": settings.shelf.remember_views,
            "threads": args.threads, "machine": machine()}


CEILING = "the queries themselves, by the carve's rule (an upper bound for this grid with this eye, never a setting)"


def score_grid(facings: list[Facing], params: VoteParams, plan: DayPlan) -> list[dict[str, Any]]:
    """Every ``alert_after_s`` x planogram prior of the grid, scored on these days."""
    grid = []
    priors = [None] + [PlanogramPrior(g, b, o) for g in GAPS if g is not None for b in BELOWS for o in OTHERS]
    for hold in HOLDS:
        for prior in priors:
            r = score(facings, params, prior, hold, plan.hours)
            grid.append({"alert_after_s": hold, **_prior_dict(prior), **r, "meets": meets(r, hold)})
    return grid


def _prior_dict(p: PlanogramPrior | None) -> dict[str, float | None]:
    return {"planned_gap": None if p is None else p.gap, "planned_below": None if p is None else p.below,
            "other_below": None if p is None else p.other_below}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shelf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="folder the split paths are relative to")
    p.add_argument("--gallery", type=Path, required=True, help="split file enrolled as the catalog (train.txt)")
    p.add_argument("--queries", type=Path, required=True, help="split file the reported scenes come from (val.txt)")
    p.add_argument("--config", type=Path, default=Path("configs/shelf-camera.toml"),
                   help="shelf config: [decision], [gate], the first camera's fps, [model]")
    p.add_argument("--hours", type=float, default=8.0, help="length of each facing's simulated day")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--bundle", type=Path, default=None, help="image bundle (default: the embedded one)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--facings", type=int, default=None, help="only the first N facings of each split (a quick check)")
    p.add_argument("--no-setup-enroll", dest="setup_enroll", action="store_false", help="do not enroll each "
                   "facing's setup snapshot as a photo of its planned product (storelens shelf setup --enroll)")
    p.add_argument("--cache", type=Path, default=None, help="keep the embedded days in CACHE.carve.pkl and "
                   "CACHE.val.pkl: a rerun with the same arguments only re-scores (seconds instead of the embedding)")
    p.add_argument("--only", choices=("carve", "val"), default=None, help="with --cache: only play and keep this "
                   "split's days (run the two at once, then once more without --only to score)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.only is not None and args.cache is None:
        parser.error("--only needs --cache (where the other run finds the days)")
    r = run(args)
    if r is None:
        print(f"kept {args.only}'s days in {args.cache.with_suffix(f'.{args.only}.pkl')}")
        return 0
    print(f"val, alert_after_s {r['alert_after_s']}, planned_gap {r['planned_gap']}, planned_below "
          f"{r['planned_below']}, other_below {r['other_below']} (chosen on the carve): "
          f"empty P {r['empty_precision']} R {r['empty_recall']}; misplaced P {r['misplaced_precision']} "
          f"R {r['misplaced_recall']}; ok P {r['ok_precision']} R {r['ok_recall']}; false alerts "
          f"{r['false_alerts_per_facing_hour']}/facing-h; time to alert p50/p95 {r['time_to_alert_s']['p50']}/"
          f"{r['time_to_alert_s']['p95']} s; occlusion alerts {r['occlusion_alerts']}; meets the bar: {r['meets']}")
    c = r["ceiling"]
    print(f"ceiling (the grid chosen on val itself, not a setting): misplaced P {c['misplaced_precision']} R "
          f"{c['misplaced_recall']}, empty P {c['empty_precision']} R {c['empty_recall']}, false alerts "
          f"{c['false_alerts_per_facing_hour']}/facing-h, occlusion alerts {c['occlusion_alerts']}; "
          f"meets: {c['meets']}")
    if args.json:
        write_json(args.json, r, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
