"""A fast numpy replica of :mod:`benchmarks.learning`'s stream, for trying product ranking rules for learned photos.

The stream policy of :mod:`benchmarks.learning` (same rng draws for the order, the shoppers and the
control products; wrong confirmations named from all products; the learner's hold, near-duplicate and
max-per-product rules; the catalog's i8 quantization with :func:`edge.catalog.index.choose_i8_scale`;
the store's search width ``k * max(4, 2 * ceil(vectors / products))`` and ties broken by product key),
with an exact search over the i8 vectors instead of USearch HNSW and the product ranking rule
pluggable (:mod:`benchmarks._replica_rules`). Photos are embedded once with the image bundle
(cached in ``--cache``); the hold threshold is the calibration's ``learn_floor`` on the bundle's carve,
as in the real benchmark. Validated against the real benchmark with the runtime's rule (``mean_top3``)
on val seeds 0-4 and carve seed 0: the same correct second-half queries with and without learning and
the same never-confirmed correct queries as ``benchmarks/results/learning-*.json``, run for run (those
files hold counts, not each query's answer).

Per variant: R@1 over the second half of the stream with learning on / off and the ratio (pooled over
``--seeds``, with the per-seed range of the ratio), and the never-confirmed products' R@1 with
learning vs without and its change in queries; the learning pass's outcomes (wrong confirmations held, true
ones held, near-duplicates skipped, learned). The learner's knobs can be varied for a threshold sweep:
``--hold-quantile`` (the ``learn_floor`` recomputed from the cached embeddings at another quantile of the
carve's best cosine to its own product; at the calibration's quantile it equals the calibrated value),
``--duplicate-cosine``, ``--max-per-product``. The study: docs/learning-ranking-study.md. Its tables::

    D=/work/shared/datasets/grocery-store; C=/tmp/replica-cache; R="python -m benchmarks.learning_replica"
    # validation (current rule), per seed
    $R --root $D --gallery $D/train.txt --stream $D/val.txt --seeds 0-4 --variants mean_top3 --per-seed --cache $C
    $R --root $D --gallery $D/train.txt --carve --seeds 0 --variants mean_top3 --per-seed --cache $C
    # variants: carve (10 seeds, 20% control) and val (5 seeds)
    $R --root $D --gallery $D/train.txt --carve --seeds 0-9 --cache $C --json carve.json
    $R --root $D --gallery $D/train.txt --stream $D/val.txt --seeds 0-4 --cache $C --json val.json
    # carve-only selection (20 seeds, 50% control), then the chosen variant per seed on val
    $R --root $D --gallery $D/train.txt --carve --seeds 0-19 --control-share 0.5 --cache $C --json select.json
    $R --root $D --gallery $D/train.txt --stream $D/val.txt --seeds 0-4 --per-seed --cache $C \\
        --variants per_source_cat3_learned1_margin0.05 mean_top3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._gallery import bundle_dir, calibrate_on_carve, carve, class_names
from benchmarks._replica_rules import QueryHits, Rule, variants
from benchmarks._results import write_json
from benchmarks.accuracy import Item, embed_items, load_split
from benchmarks.learning import SHOWN, Pass, Shopper, confirmed_sku, draws, outcome_counts, r1
from edge.catalog.index import choose_i8_scale, quantize
from edge.catalog.learning import HOLD_QUANTILE
from edge.core.config import ModelSettings
from edge.core.learning_settings import LearningSettings
from edge.models.encoders import load_image_encoder


def unit(v: np.ndarray) -> np.ndarray:
    """Unit float32 rows (the catalog's own normalisation)."""
    return quantize(v, dtype="f32")


@dataclass(frozen=True)
class Data:
    """Gallery and stream photos, embedded, and the hold threshold (the calibration's ``learn_floor``)."""

    gallery: np.ndarray
    gallery_labels: np.ndarray
    stream: np.ndarray
    stream_items: list[Item]
    names: dict[int, str]
    hold: float


class Gallery:
    """The catalog as one pass of the stream sees it: enrolled and learned photos, float and i8."""

    def __init__(self, vecs: np.ndarray, labels: np.ndarray, scale: float) -> None:
        self.unit = list(unit(vecs))
        self.keys = [int(k) for k in labels]
        self.learned = [False] * len(self.keys)
        self.lookalike = [0.0] * len(self.keys)
        self.when = [0] * len(self.keys)
        self.scale = scale
        self.i8 = list(self._i8(np.stack(self.unit)))
        self._cache: tuple[np.ndarray, ...] | None = None
        self._counts: tuple[dict[int, int], ...] = ()

    def _i8(self, v: np.ndarray) -> np.ndarray:
        """A vector as USearch's i8 cosine sees it: quantized, then unit length again."""
        q = quantize(v, dtype="i8", i8_scale=self.scale).astype(np.float32)
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    def photos_of(self, key: int) -> np.ndarray:
        return np.stack([f for f, k in zip(self.unit, self.keys, strict=True) if k == key])

    def add(self, vec: np.ndarray, key: int, when: int, max_per_product: int) -> None:
        """Learn ``vec`` as a photo of ``key``; the product's oldest learned photo leaves past the cap."""
        u = unit(vec)[0]
        others = np.stack([f for f, k in zip(self.unit, self.keys, strict=True) if k != key])
        self.lookalike.append(float((others @ u).max()))
        self.unit.append(u)
        self.keys.append(key)
        self.learned.append(True)
        self.when.append(when)
        self.i8.append(self._i8(vec)[0])
        mine = [i for i, k in enumerate(self.keys) if k == key and self.learned[i]]
        if len(mine) > max_per_product:
            drop = min(mine, key=lambda i: self.when[i])
            for column in (self.unit, self.keys, self.learned, self.lookalike, self.when, self.i8):
                del column[drop]
        self._cache = None

    def _arrays(self) -> tuple[np.ndarray, ...]:
        if self._cache is None:
            keys, learned = np.array(self.keys), np.array(self.learned)
            self._cache = (np.stack(self.i8), keys, learned, np.array(self.lookalike))
            self._counts = tuple({int(k): int(c) for k, c in zip(*np.unique(keys[sel], return_counts=True),
                                                                  strict=True)}
                                 for sel in (np.ones(len(keys), bool), ~learned, learned))
        return self._cache

    def search(self, vec: np.ndarray, k: int = SHOWN) -> QueryHits:
        """Exact search at the store's width: the top ``k * max(4, 2 * ceil(vectors / products))`` photo hits."""
        mat, keys, learned, lookalike = self._arrays()
        s = mat @ self._i8(vec)[0]
        per = max(1, math.ceil(len(keys) / len(self._counts[0])))
        top = np.argsort(-s, kind="stable")[: min(len(keys), k * max(4, 2 * per))]
        return QueryHits(scores=s[top].astype(np.float64), keys=keys[top], learned=learned[top],
                         lookalike=lookalike[top], photos=self._counts[0], catalog_photos=self._counts[1],
                         learned_photos=self._counts[2])


def play(gallery: Gallery, data: Data, order: np.ndarray, rule: Rule, *, shopper: Shopper | None,
         never: set[str], settings: LearningSettings) -> Pass:
    """One pass of the stream (no learning when ``shopper`` is None): top-1 per position, as benchmarks.learning."""
    out = Pass()
    by_name = {n: lab for lab, n in data.names.items()}
    skus = sorted(by_name)
    for pos, i in enumerate(order):
        scores = rule(gallery.search(data.stream[i]))
        ranked = [data.names[p] for p in sorted(scores, key=lambda p: (-scores[p], p))[:SHOWN]]
        truth = data.names[data.stream_items[i].label]
        out.top1.append(ranked[0] if ranked else "")
        out.shown.append(truth in ranked)
        if shopper is None or truth not in ranked or truth in never:
            continue
        key = by_name[confirmed_sku(shopper, pos, truth, skus)]
        cosine = float((gallery.photos_of(key) @ unit(data.stream[i])[0]).max())
        outcome = "held" if cosine < data.hold else "duplicate" if cosine >= settings.duplicate_cosine else "learned"
        out.outcomes.append((bool(shopper.wrong[pos]), outcome))
        if outcome == "learned":
            gallery.add(data.stream[i], key, pos + 1, settings.max_per_product)
    return out


def run_seed(data: Data, rule: Rule, seed: int, *, control_share: float, wrong_share: float,
             settings: LearningSettings) -> dict[str, Any]:
    """Correct second-half queries with learning on / off, and of the control products (never confirmed)."""
    n = len(data.stream)
    skus = sorted({data.names[int(lab)] for lab in data.gallery_labels})
    order, shopper, control = draws(n, skus, seed=seed, wrong_share=wrong_share, control_share=control_share)
    scale = choose_i8_scale(data.gallery)
    passes = {name: play(Gallery(data.gallery, data.gallery_labels, scale), data, order, rule,
                         shopper=None if name == "off" else shopper, never=never, settings=settings)
              for name, never in (("off", set()), ("on", set()), ("control", control))}
    on, off = (r1(passes[k], data.stream_items, data.names, order) for k in ("on", "off"))
    never_on = r1(passes["control"], data.stream_items, data.names, order, only=control)
    never_off = r1(passes["off"], data.stream_items, data.names, order, only=control)
    learned = outcome_counts(passes["on"])
    return {"seed": seed, "on": on["correct"], "off": off["correct"], "n": on["n"], "never_on": never_on["correct"],
            "never_off": never_off["correct"], "never_n": never_on["n"],
            **{k: learned[k] for k in OUTCOMES}}


# outcome counts of the learning pass (benchmarks.learning.outcome_counts), summed over seeds by pool
OUTCOMES = ("confirmations", "wrong_confirmations", "wrong_held", "true_held", "learned", "duplicates")


def pool(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pooled figures over seeds (micro R@1, never-confirmed R@1, summed counts), with the per-seed ratio range."""
    t = {k: sum(r[k] for r in rows) for k in ("on", "off", "n", "never_on", "never_off", "never_n", *OUTCOMES)}
    ratios = [round(r["on"] / r["off"], 4) for r in rows]
    return {"wrong_held_share": t["wrong_held"] / max(1, t["wrong_confirmations"]),
            "true_held_share": t["true_held"] / max(1, t["confirmations"] - t["wrong_confirmations"]),
            "r1_on": t["on"] / t["n"], "r1_off": t["off"] / t["n"], "ratio": t["on"] / t["off"],
            "ratio_min": min(ratios), "ratio_max": max(ratios), "never_r1_on": t["never_on"] / t["never_n"],
            "never_r1_off": t["never_off"] / t["never_n"], "never_delta_q": t["never_on"] - t["never_off"], **t}


def line(name: str, p: dict[str, Any]) -> str:
    return (f"{name:40s} R@1 {p['r1_on']:.3f} / {p['r1_off']:.3f} x{p['ratio']:.3f} "
            f"({p['ratio_min']:.4f}-{p['ratio_max']:.4f})  never {p['never_r1_on']:.3f} vs {p['never_r1_off']:.3f} "
            f"({p['never_delta_q']:+d}/{p['never_n']})  wrong held {p['wrong_held']}/{p['wrong_confirmations']}, "
            f"true held {p['true_held']}/{p['confirmations'] - p['wrong_confirmations']}, "
            f"duplicates {p['duplicates']}, learned {p['learned']}")


def seed_line(r: dict[str, Any]) -> str:
    return (f"    seed {r['seed']}: on {r['on']} off {r['off']} of {r['n']} (x{r['on'] / r['off']:.4f}), "
            f"never {r['never_on']} vs {r['never_off']} of {r['never_n']}")


def embed_split(enc: Any, root: Path, split: Path, cache: Path) -> tuple[list[Item], np.ndarray]:
    """Every photo of ``split`` embedded with ``enc`` once (cached under ``cache`` by bundle and split)."""
    items = load_split(root, split)
    path = cache / f"{enc.fingerprint}-{split.stem}-{len(items)}.npz"
    if path.exists():
        saved = np.load(path)
        if [str(it.path) for it in items] == saved["paths"].tolist():
            return items, saved["embs"]
    embs, kept, skipped = embed_items(enc, items, desc=split.stem, progress=False)
    if skipped:
        raise SystemExit(f"unreadable photos in {split}: {skipped[:3]}")
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, embs=embs.astype(np.float32), paths=np.array([str(it.path) for it in kept]))
    return kept, embs.astype(np.float32)


def carve_floor(args: argparse.Namespace, items: list[Item], embs: np.ndarray, quantile: float) -> float:
    """:func:`edge.catalog.learning.learn_floor` at another ``quantile``, from the cached embeddings: the carve's
    best cosine to its own product's photos in the gallery minus the carve (what the calibration computes)."""
    keep, held = carve(args.root, args.gallery, bundle_dir(args.bundle))
    pos = {str(it.path): i for i, it in enumerate(items)}
    ki, hi = ([pos[str(it.path)] for it in part] for part in (keep, held))
    g, q = unit(embs[ki]), unit(embs[hi])
    g_labels = np.array([items[i].label for i in ki])
    own = [float((g[g_labels == items[i].label] @ q[j]).max()) for j, i in enumerate(hi)
           if np.any(g_labels == items[i].label)]
    return round(float(np.quantile(own, quantile)), 4)


def hold_threshold(enc: Any, args: argparse.Namespace, names: dict[int, str], items: list[Item],
                   embs: np.ndarray) -> float:
    """The calibration's ``learn_floor`` on the bundle's carve (cached), as benchmarks.learning holds with;
    ``--hold-below`` overrides it, ``--hold-quantile`` recomputes it at another quantile."""
    if args.hold_below is not None:
        return float(args.hold_below)
    if args.hold_quantile is not None:
        return carve_floor(args, items, embs, args.hold_quantile)
    path = args.cache / f"{enc.fingerprint}-{args.gallery.stem}-hold.json"
    if not path.exists():
        args.cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="replica-cal-") as work:
            cal = calibrate_on_carve(args.root, args.gallery, bundle_dir(args.bundle), enc, Path(work), names)
        path.write_text(json.dumps({"learn_floor": cal.learn_floor}))
    return float(json.loads(path.read_text())["learn_floor"])


def load(args: argparse.Namespace) -> tuple[Data, str]:
    """The gallery and stream of the run (val, or the carve of the gallery split), embedded; the bundle fingerprint."""
    enc = load_image_encoder(ModelSettings(image_bundle=args.bundle, threads=1))
    names = class_names(args.root)
    items, embs = embed_split(enc, args.root, args.gallery, args.cache)
    if args.carve:
        keep, held = carve(args.root, args.gallery, bundle_dir(args.bundle))
        pos = {str(it.path): i for i, it in enumerate(items)}
        ki, hi = ([pos[str(it.path)] for it in part] for part in (keep, held))
        gallery, gallery_labels, stream, stream_items = embs[ki], [items[i].label for i in ki], embs[hi], \
            [items[i] for i in hi]
    else:
        stream_items, stream = embed_split(enc, args.root, args.stream, args.cache)
        gallery, gallery_labels = embs, [it.label for it in items]
    if len({str(it.path) for it in stream_items}) != len(stream_items):
        raise SystemExit("the stream lists a photo twice: it would be scored against its own learned crop")
    data = Data(gallery=gallery, gallery_labels=np.array(gallery_labels), stream=stream,
                stream_items=list(stream_items), names=names,
                hold=hold_threshold(enc, args, names, items, embs))
    return data, enc.fingerprint


def seeds(text: str) -> list[int]:
    """``0-4`` or ``0,2,5`` -> seeds."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.learning_replica", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="folder the split paths are relative to")
    p.add_argument("--gallery", type=Path, required=True, help="split file of the starting gallery (train.txt)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--stream", type=Path, help="split file of the stream (val.txt)")
    where.add_argument("--carve", action="store_true", help="gallery minus the bundle's carve as the gallery, "
                       "the carve as the stream")
    p.add_argument("--bundle", type=Path, default=None, help="image bundle (default: the embedded one)")
    p.add_argument("--seeds", type=seeds, default=[0, 1, 2, 3, 4], help="e.g. 0-4 or 0,3 (default 0-4)")
    p.add_argument("--control-share", type=float, default=0.2, help="products never confirmed in the control play")
    p.add_argument("--wrong-share", type=float, default=0.05, help="confirmations that name another product")
    p.add_argument("--hold-below", type=float, default=None, help="override the calibrated hold threshold")
    p.add_argument("--hold-quantile", type=float, default=None, help="hold below this quantile of the carve's "
                   "best cosine to its own product's photos (the calibration's learn_floor is at "
                   f"{HOLD_QUANTILE})")
    d = LearningSettings()
    p.add_argument("--duplicate-cosine", type=float, default=d.duplicate_cosine, help="skip crops this close")
    p.add_argument("--max-per-product", type=int, default=d.max_per_product, help="learned photos a product keeps")
    p.add_argument("--variants", nargs="+", choices=sorted(variants()), metavar="NAME",
                   help="ranking rules to run (default: all; see benchmarks._replica_rules)")
    p.add_argument("--per-seed", action="store_true", help="print each seed's counts under a variant's line")
    p.add_argument("--cache", type=Path, default=None, help="embeddings cache folder (default: a temp folder)")
    p.add_argument("--json", type=Path, help="write the figures here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="replica-") as tmp:
        args.cache = args.cache or Path(tmp)
        data, fingerprint = load(args)
    rules = variants()
    settings = LearningSettings(duplicate_cosine=args.duplicate_cosine, max_per_product=args.max_per_product)
    out: dict[str, Any] = {"stream": "carve" if args.carve else str(args.stream), "bundle": fingerprint,
                           "seeds": args.seeds, "control_share": args.control_share, "wrong_share": args.wrong_share,
                           "hold_below": data.hold, "hold_quantile": args.hold_quantile,
                           "duplicate_cosine": settings.duplicate_cosine,
                           "max_per_product": settings.max_per_product, "variants": {}}
    for name in args.variants or list(rules):
        rows = [run_seed(data, rules[name], s, control_share=args.control_share, wrong_share=args.wrong_share,
                         settings=settings) for s in args.seeds]
        out["variants"][name] = {"pooled": pool(rows), "per_seed": rows}
        print(line(name, out["variants"][name]["pooled"]), flush=True)
        if args.per_seed:
            print("\n".join(seed_line(r) for r in rows), flush=True)
    if args.json:
        write_json(args.json, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
