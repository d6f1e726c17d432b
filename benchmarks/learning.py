"""The shop floor teaching the catalog: R@1 of a stream of shoppers' photos with learning on and off.

    python -m benchmarks.learning --root DIR --gallery FILE --stream FILE --json OUT [--threads 1]
        [--seed 0] [--wrong-share 0.05] [--wrong-kind random|candidate] [--control-share 0.2] [--carve]

The gallery split's photos are enrolled into a real catalog store (SQLite + USearch i8, the
runtime's ranking: mean of a product's top 3 photos). The stream split's photos then arrive one by
one in a fixed random order (``--seed``). Each is searched, and the screen shows the top 5
products. A simulated shopper confirms the true product *only when it is among those 5*; a share
``--wrong-share`` of the confirmations name another product on purpose (``random``: any other
product, as a wrong scan or a wrong search tap; ``candidate``: another of the 5 shown). With
learning on, every confirmation goes through :class:`edge.catalog.learning.Learner` (learned,
skipped as a near-duplicate, or held) and the writer swaps the new index in before the next photo.

Reported:

- ``r1_learning`` / ``r1_no_learning``: R@1 over the second half of the stream (micro; per group
  Fruit / Vegetables / Packages and macro too). A photo is searched before its own crop can be
  learned, so no query is ever scored against its own enrolled crop (and a stream holding the same
  file twice is refused).
- ``never_confirmed_r1_learning`` / ``_no_learning``: products nobody confirms must not lose. The
  stream is played once more with a fixed random ``--control-share`` of the products never
  confirmed (the control); their second-half R@1 with learning on against off. Products the main
  stream never confirmed on its own are reported as well (``never_confirmed_natural``).
- ``wrong_confirmations``, ``wrong_held`` (and ``wrong_held_share``), ``wrong_learned``; true
  confirmations held by mistake (``true_held``); near-duplicates skipped; learn latency.

Thresholds: the hold threshold is the calibration's ``learn_floor`` and the decision thresholds its
score/margin, from ``storelens calibrate``'s code run on the bundle's sessions carve of the gallery
split (photos the encoder never trained on; the gallery minus the carve as the catalog), never on
the stream. ``--carve`` runs the whole benchmark on that carve instead (gallery minus carve as the
gallery, the carve as the stream): where the learning settings are chosen.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._gallery import build_store, bundle_dir, calibrate_on_carve, carve, class_names, copy_store
from benchmarks._results import write_json
from benchmarks.accuracy import Item, embed_items, load_split, machine
from edge.catalog.learning import Learner
from edge.catalog.store import Store
from edge.core.config import ModelSettings
from edge.core.learning_settings import LearningSettings
from edge.models.encoders import load_image_encoder
from edge.models.preprocess import read_image

GROUPS = ("Fruit", "Vegetables", "Packages")
SESSION_THRESHOLD = 0.6  # thumbnail cosine linking two photos into a session (export.train's session_threshold)
SHOWN = 5  # candidates the screen shows


@dataclass
class Pass:
    """One play of the stream: per position, the top-1 sku and whether the truth was shown; learning outcomes."""

    top1: list[str] = field(default_factory=list)
    shown: list[bool] = field(default_factory=list)
    confirmed: set[str] = field(default_factory=set)  # products truly confirmed at least once
    outcomes: list[tuple[bool, str]] = field(default_factory=list)  # (wrong on purpose, learned|duplicate|held)
    learn_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Shopper:
    """The simulated shoppers' draws, fixed per stream position so every pass sees the same shoppers."""

    wrong: np.ndarray  # bool per position: this confirmation names another product on purpose
    pick: np.ndarray  # uniform [0, 1) per position: which other product


def draws(n: int, skus: Sequence[str], *, seed: int, wrong_share: float,
          control_share: float) -> tuple[np.ndarray, Shopper, set[str]]:
    """One rng for a run: the stream order, the shoppers' draws and the control products (of sorted ``skus``)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    shopper = Shopper(wrong=rng.random(n) < wrong_share, pick=rng.random(n))
    control = {skus[i] for i in rng.choice(len(skus), round(control_share * len(skus)), replace=False)}
    return order, shopper, control


def confirmed_sku(shopper: Shopper, pos: int, truth: str, pool: Sequence[str]) -> str:
    """The sku the shopper at ``pos`` confirms: the truth, or on purpose another product of ``pool``."""
    if not shopper.wrong[pos]:
        return truth
    others = [s for s in pool if s != truth] or [truth]
    return others[int(shopper.pick[pos] * len(others))]


def play(store: Store, embs: np.ndarray, items: Sequence[Item], names: dict[int, str], order: np.ndarray, *,
         shopper: Shopper, learner: Learner | None, never: set[str], wrong_kind: str,
         learn_before: int | None = None) -> Pass:
    """Search each photo in ``order``; with a learner, confirm it as the shopper would and learn (only the
    first ``learn_before`` positions when given: the teaching sessions of ``--split-sessions``)."""
    out = Pass()
    skus = sorted(set(names.values()))
    for pos, i in enumerate(order):
        cands = [c.sku for c in store.match_vectors(embs[i : i + 1], SHOWN)[0]]
        truth = names[items[i].label]
        out.top1.append(cands[0] if cands else "")
        out.shown.append(truth in cands)
        if learner is None or truth not in cands or truth in never or (learn_before is not None
                                                                          and pos >= learn_before):
            continue
        sku = confirmed_sku(shopper, pos, truth, skus if wrong_kind == "random" else cands)
        if not shopper.wrong[pos]:
            out.confirmed.add(truth)
        t0 = time.perf_counter()
        res = learner.learn(sku, read_image(items[i].path), source="benchmark", ref=str(items[i].path),
                            embedding=embs[i])
        out.learn_ms.append((time.perf_counter() - t0) * 1000)
        out.outcomes.append((bool(shopper.wrong[pos]), res.outcome))
    return out


def r1(p: Pass, items: Sequence[Item], names: dict[int, str], order: np.ndarray, *,
       only: set[str] | None = None, start: int | None = None) -> dict[str, Any]:
    """R@1 over the second half of the stream, or from position ``start`` (micro, macro, per group; ``correct``
    of ``n``), optionally of some products only."""
    half = range(len(order) // 2 if start is None else start, len(order))
    rows = [(names[items[order[j]].label], items[order[j]].group, p.top1[j] == names[items[order[j]].label])
            for j in half]
    rows = [r for r in rows if only is None or r[0] in only]
    if not rows:
        return {"r1": None, "macro_r1": None, "n": 0, "correct": 0, "groups": {}}
    per_sku: dict[str, list[bool]] = {}
    for sku, _, ok in rows:
        per_sku.setdefault(sku, []).append(ok)
    groups = {g: round(float(np.mean([ok for _, gg, ok in rows if gg == g])), 4)
              for g in GROUPS if any(gg == g for _, gg, _ in rows)}
    return {"r1": round(float(np.mean([ok for _, _, ok in rows])), 4),
            "macro_r1": round(float(np.mean([np.mean(v) for v in per_sku.values()])), 4), "n": len(rows),
            "correct": sum(ok for _, _, ok in rows), "groups": groups}


def outcome_counts(p: Pass) -> dict[str, Any]:
    wrong = [o for w, o in p.outcomes if w]
    true = [o for w, o in p.outcomes if not w]
    ms = sorted(p.learn_ms)
    return {"confirmations": len(p.outcomes), "wrong_confirmations": len(wrong),
            "wrong_held": wrong.count("held"), "wrong_learned": wrong.count("learned"),
            "wrong_held_share": round(wrong.count("held") / len(wrong), 4) if wrong else None,
            "true_held": true.count("held"), "true_held_share": round(true.count("held") / len(true), 4) if true
            else None, "learned": true.count("learned") + wrong.count("learned"),
            "duplicates": true.count("duplicate") + wrong.count("duplicate"),
            "learn_ms_p50": round(statistics.median(ms), 1) if ms else None,
            "learn_ms_p95": round(ms[int(0.95 * (len(ms) - 1))], 1) if ms else None}


def session_order(items: Sequence[Item], *, seed: int) -> tuple[np.ndarray, int]:
    """(order, n_teach): the stream split by capture session, the teaching sessions first.

    Sessions are the export carve's (:func:`export.carve.carve_sessions`: a product's photos whose 16x16
    thumbnails have cosine > 0.6, linked), about half of each product's photos held out whole as the scored
    part. Learning then only sees photos of sessions other than the ones scored, so a learned sibling shot
    of the same bag on the same shelf cannot lift the figure."""
    from export.carve import carve_sessions, thumbnails
    from export.data import Sample

    samples = [Sample(path=it.path, label=it.label, coarse=it.coarse, group=it.group) for it in items]
    rng = np.random.default_rng(seed + 1)
    teach, scored = carve_sessions([it.label for it in items], thumbnails(samples), fraction=0.5,
                                   threshold=SESSION_THRESHOLD, rng=rng)
    return np.concatenate([rng.permutation(teach), rng.permutation(scored)]).astype(np.int64), len(teach)


def layout(args: argparse.Namespace) -> tuple[list[Item], list[Item]]:
    if args.carve:
        return carve(args.root, args.gallery, bundle_dir(args.bundle))
    return load_split(args.root, args.gallery), load_split(args.root, args.stream)


def run(args: argparse.Namespace) -> dict[str, Any]:
    enc = load_image_encoder(ModelSettings(image_bundle=args.bundle, threads=args.threads))
    names = class_names(args.root)
    gallery, stream = layout(args)
    if len({str(it.path) for it in stream}) != len(stream):
        raise SystemExit("the stream lists a photo twice: it would be scored against its own learned crop")
    work = Path(tempfile.mkdtemp(prefix="bench-learning-"))
    try:
        return _run(args, enc, names, gallery, stream, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, enc: Any, names: dict[int, str], gallery: list[Item], stream: list[Item],
         work: Path) -> dict[str, Any]:
    cal = calibrate_on_carve(args.root, args.gallery, bundle_dir(args.bundle), enc, work, names)
    base = build_store(gallery, work / "base", enc, names, threads=args.threads)
    base.save_calibration(cal)
    embs, kept, _ = embed_items(enc, stream, desc="stream", progress=False)
    order, shopper, control = draws(len(kept), sorted(set(names[it.label] for it in gallery)), seed=args.seed,
                                    wrong_share=args.wrong_share, control_share=args.control_share)
    # max_learned_per_hour off: the stream replays weeks of confirmations in seconds of wall time
    settings = LearningSettings(duplicate_cosine=args.duplicate_cosine, max_per_product=args.max_per_product,
                                hold_below=args.hold_below, max_learned_per_hour=None)
    start = None
    if args.split_sessions:
        order, start = session_order(kept, seed=args.seed)
    passes: dict[str, Pass] = {"off": play(base, embs, kept, names, order, shopper=shopper, learner=None,
                                           never=set(), wrong_kind=args.wrong_kind)}
    for name, never in (("on", set()), ("control", control)):
        store = copy_store(base, work / name)
        learner = Learner(store, settings)
        passes[name] = play(store, embs, kept, names, order, shopper=shopper, learner=learner, never=never,
                            wrong_kind=args.wrong_kind, learn_before=start)
        learner.close()
        store.close()
    base.close()
    return report(args, passes, kept, names, order, control, cal, settings, enc.fingerprint, start=start)


def report(args: argparse.Namespace, passes: dict[str, Pass], items: Sequence[Item], names: dict[int, str],
           order: np.ndarray, control: set[str], cal: Any, settings: LearningSettings, fp: str,
           start: int | None = None) -> dict[str, Any]:
    score = functools.partial(r1, start=start)
    off, on, ctl = (score(passes[k], items, names, order) for k in ("off", "on", "control"))
    natural = {names[it.label] for it in items} - passes["on"].confirmed
    never_on = score(passes["control"], items, names, order, only=control)
    never_off = score(passes["off"], items, names, order, only=control)
    return {
        "r1_learning": on["r1"], "r1_no_learning": off["r1"],
        "r1_ratio": round(on["r1"] / off["r1"], 4) if on["r1"] and off["r1"] else None,
        "macro_r1_learning": on["macro_r1"], "macro_r1_no_learning": off["macro_r1"],
        "groups_learning": on["groups"], "groups_no_learning": off["groups"], "second_half_queries": on["n"],
        "never_confirmed_r1_learning": never_on["r1"], "never_confirmed_r1_no_learning": never_off["r1"],
        "never_confirmed_products": len(control), "never_confirmed_queries": never_on["n"],
        "control_r1_learning": ctl["r1"],
        "never_confirmed_natural": {"products": len(natural),
                                    "r1_learning": r1(passes["on"], items, names, order, only=natural)["r1"],
                                    "r1_no_learning": r1(passes["off"], items, names, order, only=natural)["r1"]},
        **outcome_counts(passes["on"]), "control_outcomes": outcome_counts(passes["control"]),
        "shown_rate_first_half_no_learning": round(float(np.mean(passes["off"].shown[: len(order) // 2])), 4),
        "split": ("by capture session: learned from the first sessions, scored on the others (from position "
                  f"{start} of {len(order)})") if start is not None else "random order, scored on the second half",
        "settings": {"hold_below": cal.learn_floor if settings.hold_below is None else settings.hold_below,
                     "hold_from": "calibration learn_floor (carve)" if settings.hold_below is None else "--hold-below",
                     "duplicate_cosine": settings.duplicate_cosine, "max_per_product": settings.max_per_product,
                     "calibrated_score": round(cal.score, 4), "calibrated_margin": round(cal.margin, 4)},
        "stream": "carve" if args.carve else str(args.stream), "gallery": str(args.gallery), "seed": args.seed,
        "wrong_share": args.wrong_share, "wrong_kind": args.wrong_kind, "control_share": args.control_share,
        "bundle": fp, "threads": args.threads, "machine": machine()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.learning", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="folder the split paths are relative to")
    p.add_argument("--gallery", type=Path, required=True, help="split file of the starting gallery (train.txt)")
    p.add_argument("--stream", type=Path, help="split file of the stream (val.txt); not with --carve")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--carve", action="store_true", help="gallery minus the bundle's carve as the gallery, the "
                   "carve as the stream (where the learning settings are chosen)")
    p.add_argument("--bundle", type=Path, default=None, help="image bundle (default: the embedded one)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="stream order, shoppers' draws and the control products")
    p.add_argument("--wrong-share", type=float, default=0.05, help="confirmations that name another product")
    p.add_argument("--wrong-kind", choices=["random", "candidate"], default="random")
    p.add_argument("--split-sessions", action="store_true", help="learn from some capture sessions, score on the "
                   "others (sessions as the export carve links them): no same-session photo teaches a scored one")
    p.add_argument("--control-share", type=float, default=0.2, help="products never confirmed in the control play")
    d = LearningSettings()
    p.add_argument("--duplicate-cosine", type=float, default=d.duplicate_cosine)
    p.add_argument("--max-per-product", type=int, default=d.max_per_product)
    p.add_argument("--hold-below", type=float, default=None, help="override the calibrated hold threshold")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.carve and args.stream is None:
        print("benchmarks.learning: error: --stream is required (or --carve)", file=sys.stderr)
        return 2
    res = run(args)
    print(f"R@1 second half: learning {res['r1_learning']} vs {res['r1_no_learning']} without "
          f"(x{res['r1_ratio']}); per group {res['groups_learning']} vs {res['groups_no_learning']}")
    print(f"never confirmed ({res['never_confirmed_products']} products, {res['never_confirmed_queries']} queries): "
          f"{res['never_confirmed_r1_learning']} vs {res['never_confirmed_r1_no_learning']}")
    print(f"wrong confirmations {res['wrong_confirmations']}: held {res['wrong_held']} ({res['wrong_held_share']}), "
          f"learned {res['wrong_learned']}; true held {res['true_held']}; learned {res['learned']}, "
          f"duplicates {res['duplicates']}; learn p50 {res['learn_ms_p50']} ms")
    if args.json:
        write_json(args.json, res, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
