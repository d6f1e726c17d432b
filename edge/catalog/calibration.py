"""When to name a product: thresholds on the top score and on the top-1 minus top-2 margin.

A query is *named* (known) when ``top1 >= score`` and ``top1 - top2 >= margin``. Two ways to choose
the pair from labelled queries:

- **risk** (``max_wrong``, the default; :func:`choose_for_risk`): the pair that names the most queries
  correctly while wrong answers — another enrolled product, or a product that is not enrolled —
  stay at most ``max_wrong`` of everything named. The labelled photos are split in two halves: the
  pair is chosen on one (fit) and checked on the other (check); when the check half exceeds the
  target the next stricter pair of the fit half's frontier is taken until it does not (recorded
  as ``tightened``), so the stored pair never exceeds the target on photos it was not chosen on.
- **acceptance** (``target``; the first recipe): among all pairs that accept at least ``target`` of
  the queries of enrolled products, the one with the lowest false-accept rate on queries of
  products *held out* of the catalog. It never counts wrong enrolled products, so at top-1 ~0.85
  accepting 95% names ~10% wrongly; kept for comparison.

Held-out products are simulated
without rebuilding any index: their candidates are dropped from the rankings, exactly as if
they had never been enrolled. The result is stored with the catalog (``meta.calibration``),
tagged with the catalog version and encoder fingerprint it was measured on.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.core.errors import InputError
from edge.core.types import Calibration, Candidate

if TYPE_CHECKING:
    from edge.catalog.store import Store

DEFAULT_TARGET = 0.95  # acceptance mode: share of known-product queries the chosen thresholds accept
DEFAULT_MAX_WRONG = 0.02  # risk mode: share of wrong answers among everything named
DEFAULT_HOLDOUT = 0.2  # share of enrolled products treated as not enrolled


@dataclass(frozen=True)
class QueryScores:
    """Per labelled query: top-1 score, margin, whether the top-1 sku is right, whether it is known."""

    top1: np.ndarray
    margin: np.ndarray
    correct: np.ndarray
    known: np.ndarray


def query_scores(rankings: Sequence[Sequence[Candidate]], labels: Sequence[str], held_out: set[str]) -> QueryScores:
    """Scores of each query's ranking with the held-out products' candidates removed."""
    if len(rankings) != len(labels):
        raise ValueError("one ranking per label")
    top1, margin, correct, known = [], [], [], []
    for ranking, label in zip(rankings, labels, strict=True):
        kept = [c for c in ranking if c.sku not in held_out]
        s1 = float(kept[0].score) if kept else -1.0
        s2 = float(kept[1].score) if len(kept) > 1 else -1.0
        top1.append(s1)
        margin.append(s1 - s2)
        correct.append(bool(kept) and kept[0].sku == label)
        known.append(label not in held_out)
    return QueryScores(np.asarray(top1, np.float64), np.asarray(margin, np.float64),
                       np.asarray(correct, bool), np.asarray(known, bool))


def choose_thresholds(q: QueryScores, *, target: float) -> tuple[float, float]:
    """The (score, margin) pair accepting >= ``target`` of known queries with the fewest false accepts."""
    if not 0 < target <= 1:
        raise InputError(f"target acceptance {target} is outside (0, 1]", hint="use e.g. --target 0.95")
    k_top, k_mar = q.top1[q.known], q.margin[q.known]
    u_top, u_mar = q.top1[~q.known], q.margin[~q.known]
    if len(k_top) == 0:
        raise InputError("no labelled query belongs to an enrolled product",
                         hint="label images with skus that are in the catalog")
    need = int(np.ceil(target * len(k_top)))
    best: tuple[float, float, float, float] | None = None  # (far, -accept, score, margin)
    for m in np.unique(np.concatenate([[0.0], np.quantile(k_mar, np.linspace(0, 1 - target, 21))])):
        ok = np.sort(k_top[k_mar >= m])[::-1]
        if len(ok) < need:
            continue
        t = float(ok[need - 1])  # the largest score threshold that still accepts `need` queries
        accept = float(np.mean((k_top >= t) & (k_mar >= m)))
        far = float(np.mean((u_top >= t) & (u_mar >= m))) if len(u_top) else 0.0
        cand = (far, -accept, t, float(m))
        if best is None or cand < best:
            best = cand
    assert best is not None  # m = 0 always accepts every known query, so a pair always exists
    return best[2], best[3]


def _frontier(q: QueryScores, max_wrong: float) -> list[tuple[int, float, float]]:
    """Every (correct named, score, margin) pair whose wrong share among named is <= ``max_wrong``, best first."""
    wrong = ~(q.correct & q.known)
    out: list[tuple[int, float, float]] = []
    grid = np.unique(np.concatenate([[0.0], np.quantile(q.margin, np.linspace(0, 0.6, 31))]))
    for m in grid:
        sel = np.flatnonzero(q.margin >= m)
        order = sel[np.argsort(-q.top1[sel], kind="stable")]
        cum_wrong = np.cumsum(wrong[order])
        named = np.arange(1, len(order) + 1)
        last = np.r_[q.top1[order][1:] != q.top1[order][:-1], True]  # cut only between distinct scores
        for i in np.flatnonzero(last & (cum_wrong <= max_wrong * named)):
            out.append((int(named[i] - cum_wrong[i]), float(q.top1[order][i]), float(m)))
    return sorted(out, key=lambda t: (-t[0], -t[1], t[2]))


def named_figures(q: QueryScores, *, score: float, margin: float) -> dict[str, float]:
    """Shares of all queries named correctly / wrongly / not named, and wrong among named, at a pair."""
    named = (q.top1 >= score) & (q.margin >= margin)
    right = named & q.correct & q.known
    n = max(1, len(q.top1))
    return {"queries": float(len(q.top1)), "named_correct": float(right.sum() / n),
            "named_wrong": float((named & ~right).sum() / n), "not_named": float((~named).sum() / n),
            "wrong_among_named": float((named & ~right).sum() / max(1, named.sum()))}


def choose_for_risk(fit: QueryScores, check: QueryScores, *, max_wrong: float) -> tuple[float, float, dict[str, float]]:
    """(score, margin, figures): the fit half's best pair whose wrong share stays <= ``max_wrong`` on both halves."""
    if not 0 < max_wrong < 1:
        raise InputError(f"--max-wrong {max_wrong} is outside (0, 1)", hint="use e.g. --max-wrong 0.02")
    pairs = _frontier(fit, max_wrong)
    for i, (_, score, margin) in enumerate(pairs):
        c = named_figures(check, score=score, margin=margin)
        if c["wrong_among_named"] <= max_wrong:
            f = named_figures(fit, score=score, margin=margin)
            figures = {**{f"fit_{k}": round(v, 4) for k, v in f.items()},
                       **{f"check_{k}": round(v, 4) for k, v in c.items()}, "tightened": float(i)}
            return score, margin, figures
    # nothing is safe to name: a threshold no cosine reaches (every item unknown, with its pick list)
    return 1.0, 0.0, {"fit_named_correct": 0.0, "check_named_correct": 0.0, "tightened": float(len(pairs))}


def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic random half of ``n`` query indices (fit) and the rest (check)."""
    perm = np.random.default_rng(seed + 1).permutation(n)
    return np.sort(perm[: (n + 1) // 2]), np.sort(perm[(n + 1) // 2 :])


def subset(q: QueryScores, idx: np.ndarray) -> QueryScores:
    return QueryScores(q.top1[idx], q.margin[idx], q.correct[idx], q.known[idx])


def summarise(q: QueryScores, *, score: float, margin: float) -> dict[str, float]:
    acc = (q.top1 >= score) & (q.margin >= margin)
    k, u = q.known, ~q.known
    return {
        "known_accept_rate": float(np.mean(acc[k])) if k.any() else 0.0,
        "known_top1_accuracy": float(np.mean(q.correct[k])) if k.any() else 0.0,
        "accepted_precision": float(np.mean(q.correct[k & acc])) if (k & acc).any() else 0.0,
        "false_accept_rate": float(np.mean(acc[u])) if u.any() else 0.0,
    }


def pick_held_out(skus: Sequence[str], *, fraction: float, seed: int = 0) -> set[str]:
    """A deterministic random ``fraction`` of the labelled, enrolled skus, treated as not enrolled."""
    if not 0 <= fraction < 1:
        raise InputError(f"held-out fraction {fraction} is outside [0, 1)", hint="use e.g. --holdout 0.2")
    uniq = sorted(set(skus))
    n = round(fraction * len(uniq))
    rng = np.random.default_rng(seed)
    return {uniq[i] for i in rng.choice(len(uniq), size=n, replace=False)} if n else set()


def read_labelled(source: Path, *, classes: Path | None = None) -> list[tuple[Path, str]]:
    """Labelled query images: a split file (``path, fine_label, ...``, labels mapped to skus through
    ``classes.csv`` beside it, as the Grocery Store importer names products) or a ``<root>/<sku>/*.jpg`` folder."""
    if source.is_dir():
        from edge.models.preprocess import IMAGE_SUFFIXES

        return [(p, sub.name) for sub in sorted(d for d in source.iterdir() if d.is_dir())
                for p in sorted(sub.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not source.is_file():
        raise InputError(f"labelled images not found: {source}", hint="pass a split file or a <root>/<sku>/ folder")
    classes = classes or source.parent / "classes.csv"
    if not classes.is_file():
        raise InputError(f"no classes.csv beside {source}", hint="pass --classes CSV mapping class ids to names")
    with classes.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    names = {int(r[1]): r[0].strip() for r in rows if len(r) > 1 and r[1].strip().isdigit()}
    out = []
    for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        fields = [x.strip() for x in line.split(",")]
        if not line.strip():
            continue
        if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) not in names:
            raise InputError(f"{source}:{n}: expected `path, class_id, ...` with a class id in {classes.name}",
                             hint="fix the line")
        out.append((source.parent / fields[0], names[int(fields[1])]))
    return out


@dataclass(frozen=True)
class LabelledRankings:
    """Labelled photos searched against a store: what :func:`choose_calibration` chooses from (embed once, choose
    at several targets)."""

    rankings: list[list[Candidate]]
    labels: list[str]
    vectors: np.ndarray
    unknown: set[str]  # held out of the catalog (simulated) or not enrolled
    problems: list[str]


def search_labelled(store: Store, labelled: Sequence[tuple[Path, str]], *, holdout: float = DEFAULT_HOLDOUT,
                    seed: int = 0, batch: int = 32, progress: bool = True, exclude: frozenset[str] = frozenset(),
                    load: Callable[[Path], np.ndarray] | None = None) -> LabelledRankings:
    """Embed labelled photos (``load``: how a path becomes the image the camera would give; default: read it) and
    rank the store's products for each, with ``holdout`` of the enrolled products chosen to be simulated as unknown.
    Skus in ``exclude`` are never an answer (the kiosk's empty-tray entry) and are left out of the rankings."""
    from tqdm import tqdm

    from edge.core.errors import ImageError
    from edge.models.preprocess import read_image

    if store.image_encoder is None:
        raise InputError("no image encoder is loaded", hint="configure model.image_bundle")
    enrolled = {p.sku for p in store.catalog.products()} - exclude
    held_out = pick_held_out([s for _, s in labelled if s in enrolled], fraction=holdout, seed=seed)
    unknown = held_out | {s for _, s in labelled if s not in enrolled}
    k = min(len(enrolled) + len(exclude), len(held_out) + len(exclude) + 5)
    problems: list[str] = []
    rankings: list[list[Candidate]] = []
    labels: list[str] = []
    vectors: list[np.ndarray] = []
    for i in tqdm(range(0, len(labelled), batch), desc="calibrate", unit="batch", disable=not progress):
        images, names = [], []
        for path, sku in labelled[i : i + batch]:
            try:
                images.append((load or read_image)(path))
                names.append(sku)
            except ImageError as e:
                problems.append(f"skipped: {e}")
        if images:
            vectors.append(store.image_encoder.embed(images))
            rankings.extend([c for c in r if c.sku not in exclude] for r in store.match_vectors(vectors[-1], k))
            labels.extend(names)
    if not labels:
        raise InputError("no labelled image could be read", hint="check the paths in the labelled list")
    return LabelledRankings(rankings, labels, np.concatenate(vectors), unknown, problems)


def choose_calibration(store: Store, r: LabelledRankings, *, target: float = DEFAULT_TARGET,
                       max_wrong: float | None = DEFAULT_MAX_WRONG, seed: int = 0) -> tuple[Calibration, list[str]]:
    """The thresholds for searched labelled photos (risk mode when ``max_wrong`` is set, else acceptance mode at
    ``target``), as a Calibration for ``store``. Returns (result, problems)."""
    from edge.catalog.learning import learn_floor

    problems = list(r.problems)
    q = query_scores(r.rankings, r.labels, r.unknown)
    risk: dict[str, float] | None = None
    if max_wrong is not None:
        fit, check = split_halves(len(r.labels), seed)
        score, margin, risk = choose_for_risk(subset(q, fit), subset(q, check), max_wrong=max_wrong)
        if risk["tightened"]:
            problems.append(f"the pair chosen on the fit half named {max_wrong:.0%}+ wrongly on the check half; "
                            f"took the {int(risk['tightened'])}. stricter pair")
        if len(r.labels) < 200:
            problems.append(f"only {len(r.labels)} labelled photos: a wrong share of {max_wrong:.0%} is measured on "
                            f"~{len(r.labels) // 2} photos a half; label more (a few per product, 200+) for a "
                            "figure that holds")
    else:
        score, margin = choose_thresholds(q, target=target)
    s = summarise(q, score=score, margin=margin)
    enc = store.image_encoder
    cal = Calibration(score=score, margin=margin, target=target, known_queries=int(q.known.sum()),
                      unknown_queries=int((~q.known).sum()), held_out=tuple(sorted(r.unknown)),
                      catalog_version=store.catalog_version, fingerprint=enc.fingerprint if enc else "",
                      learn_floor=learn_floor(store, r.vectors, r.labels), max_wrong=max_wrong, risk=risk, **s)
    return cal, problems


def run_calibration(store: Store, labelled: Sequence[tuple[Path, str]], *, target: float = DEFAULT_TARGET,
                    max_wrong: float | None = DEFAULT_MAX_WRONG, holdout: float = DEFAULT_HOLDOUT, seed: int = 0,
                    batch: int = 32, progress: bool = True,
                    exclude: frozenset[str] = frozenset()) -> tuple[Calibration, list[str]]:
    """Embed labelled images, simulate held-out products, choose thresholds (risk mode when ``max_wrong`` is
    set, else acceptance mode at ``target``). Returns (result, problems)."""
    r = search_labelled(store, labelled, holdout=holdout, seed=seed, batch=batch, progress=progress, exclude=exclude)
    return choose_calibration(store, r, target=target, max_wrong=max_wrong, seed=seed)
