"""Shopper text search on the Grocery Store catalog: top-1/top-3 hit rate per kind, query latency.

Queries: ``benchmarks/data/search_queries.tsv`` (kind, query, acceptable skus; written from a
kiosk shopper's point of view before any tuning). A query counts as a hit at k when one of its
acceptable products is among the first k results. The split is fixed (:func:`split_of`): a
query is in the *tuning* half when the first byte of sha1(query) is even, else *held-out*;
tuning looks only at the tuning half, the held-out half is what the figures claim.

Catalog: every GSD product (``read_grocery_store``: title as name, English description,
information text and Swedish description as extra text; no images) in a fresh store under a
temporary folder, embedded by the shipped MiniLM text bundle (int8, onnxruntime, one thread).

Latency: wall time of one ``Store.search_text`` call (text encoder + FTS5 + fusion), one
thread, each query ``--repeats`` times after a warm-up; p50/p99 over all calls. The calling
thread's CPU time is reported beside it (``cpu_ms``): on a shared machine the wall time also
holds the waits for a core, the CPU time only the query's own work. The 1-minute load average
before and after the run goes into the report.

    python -m benchmarks.search [--mode plain|shopper] [--json runs/search.json] [--misses]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge.catalog.importers.gsd import read_grocery_store
from edge.catalog.store import Store
from edge.core.config import ModelSettings
from edge.models.encoders import load_text_encoder

QUERIES = Path(__file__).parent / "data" / "search_queries.tsv"
QUERIES_V2 = Path(__file__).parent / "data" / "search_queries_v2.tsv"  # frozen held-out set (issue 31)
QUERIES_V2_SHA256 = "c47e2335fb80d67e7d6a38d808b4ff631c065d1d1741c3d44189e187be2445b9"  # docs/benchmarks.md
GSD = Path("/work/shared/datasets/grocery-store")
NO_SYNONYMS = Path(__file__).parent / "data" / "no_synonyms.toml"
HALVES = ("tuning", "held-out")
MODES = ("shopper", "plain", "no-synonyms")
K = 3


@dataclass(frozen=True)
class Query:
    kind: str
    text: str
    acceptable: frozenset[str]
    held_out_only: bool = False  # from a file whose "# split: all-held-out" line says none may be tuned on

    @property
    def half(self) -> str:
        return "held-out" if self.held_out_only else split_of(self.text)


def split_of(query: str) -> str:
    """The fixed split: ``tuning`` when the first byte of sha1(query, UTF-8) is even, else ``held-out``."""
    return HALVES[hashlib.sha1(query.encode("utf-8")).digest()[0] % 2]


def read_queries(path: Path = QUERIES) -> list[Query]:
    """The queries of a TSV file; a ``# split: all-held-out`` line makes every query held-out (a frozen set)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    all_held_out = any(ln.strip() == "# split: all-held-out" for ln in lines)
    out = []
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        kind, text, acceptable = line.split("\t")
        out.append(Query(kind=kind, text=text, acceptable=frozenset(acceptable.split()), held_out_only=all_held_out))
    return out


def build_store(root: Path, data_dir: Path, *, mode: str) -> Store:
    """A text-only store of every GSD product (no images), MiniLM int8 text encoder on one thread."""
    encoder = load_text_encoder(ModelSettings(threads=1))
    store = Store(data_dir=data_dir, text_encoder=encoder, **_mode_kwargs(mode))
    store.import_records(read_grocery_store(root, split=None, iconic=False), progress=False)
    return store


def _mode_kwargs(mode: str) -> dict[str, Any]:
    if mode == "no-synonyms":  # shopper search with an empty synonym layer (ablation)
        return {"text_search": "shopper", "synonyms": NO_SYNONYMS, "default_synonyms": False}
    return {"text_search": mode}


@dataclass
class Outcome:
    query: Query
    top: list[str]
    ms: list[float]
    cpu_ms: list[float]

    def hit(self, k: int) -> bool:
        return any(sku in self.query.acceptable for sku in self.top[:k])


def run_queries(search: Callable[[str], list[str]], queries: Sequence[Query], *, repeats: int) -> list[Outcome]:
    for q in queries[:20]:  # warm-up: caches, first-call allocations
        search(q.text)
    out = [Outcome(query=q, top=[], ms=[], cpu_ms=[]) for q in queries]
    for _ in range(repeats):
        for o in out:
            t0, c0 = time.perf_counter(), time.thread_time()
            o.top = search(o.query.text)
            o.ms.append((time.perf_counter() - t0) * 1000)
            o.cpu_ms.append((time.thread_time() - c0) * 1000)
    return out


def summarise(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Per half: per kind and overall {n, top1, top3}; latency p50/p99 over every call."""
    report: dict[str, Any] = {}
    for half in HALVES:
        rows = [o for o in outcomes if o.query.half == half]
        if not rows:
            continue
        kinds = sorted({o.query.kind for o in rows})
        report[half] = {kind: _rates([o for o in rows if o.query.kind == kind]) for kind in kinds}
        report[half]["all"] = _rates(rows)
    for name, attr in (("latency_ms", "ms"), ("cpu_ms", "cpu_ms")):
        ms = np.array([t for o in outcomes for t in getattr(o, attr)])
        report[name] = {"calls": len(ms), "p50": round(float(np.percentile(ms, 50)), 2),
                        "p99": round(float(np.percentile(ms, 99)), 2), "max": round(float(ms.max()), 2)}
    return report


def _rates(rows: Sequence[Outcome]) -> dict[str, float | int]:
    n = len(rows)
    return {"n": n, "top1": round(sum(o.hit(1) for o in rows) / max(1, n), 3),
            "top3": round(sum(o.hit(K) for o in rows) / max(1, n), 3)}


def print_report(report: dict[str, Any]) -> None:
    halves = [h for h in HALVES if h in report]
    kinds = [*sorted({k for half in halves for k in report[half] if k != "all"}), "all"]
    print(f"{'kind':<10}" + "".join(f"{h + ' n':>14}{'top1':>7}{'top3':>7}" for h in halves))
    for kind in kinds:
        cells = ""
        for half in halves:
            r = report[half].get(kind, {"n": 0, "top1": 0.0, "top3": 0.0})
            cells += f"{r['n']:>14}{r['top1']:>7.3f}{r['top3']:>7.3f}"
        print(f"{kind:<10}{cells}")
    lat, cpu = report["latency_ms"], report["cpu_ms"]
    print(f"latency (one thread, {lat['calls']} calls): p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, "
          f"max {lat['max']:.2f} ms; thread CPU p50 {cpu['p50']:.2f} ms, p99 {cpu['p99']:.2f} ms; "
          f"load average {report['load_average'][0]:.1f} -> {report['load_average'][1]:.1f}")


def print_misses(outcomes: Sequence[Outcome]) -> None:
    """Top-3 misses of the tuning half only (the held-out half is not looked at query by query)."""
    for o in outcomes:
        if o.query.half == "tuning" and not o.hit(K):
            print(f"MISS [{o.query.kind}] {o.query.text!r}: got {o.top[:K]} want {sorted(o.query.acceptable)[:4]}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=GSD, help="grocery-store dataset folder")
    ap.add_argument("--queries", type=Path, default=QUERIES)
    ap.add_argument("--mode", default="shopper", choices=MODES,
                    help="shopper (default), plain (FTS5 + MiniLM RRF as before), no-synonyms (shopper without them)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls a query")
    ap.add_argument("--misses", action="store_true", help="list the tuning half's top-3 misses")
    ap.add_argument("--weights", type=json.loads, default={},
                    help='shopper ranking weights to try, JSON (e.g. \'{"text_x": 0}\'); see SearchWeights')
    ap.add_argument("--tuning-only", action="store_true", help="run and print the tuning half only (while tuning)")
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args(argv)
    queries = [q for q in read_queries(args.queries) if q.half == "tuning" or not args.tuning_only]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(args.root, Path(tmp), mode=args.mode)
        if store.shopper is not None and args.weights:
            store.shopper.weights = replace(store.shopper.weights, **args.weights)
        try:
            outcomes = run_queries(lambda q: [r.sku for r in store.search_text(q, k=K)], queries,
                                   repeats=args.repeats)
        finally:
            store.close()
    report = {"mode": args.mode, "weights": asdict(store.shopper.weights) if store.shopper else None,
              "queries": str(args.queries), "k": K, **summarise(outcomes),
              "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count()}}
    print_report(report)
    if args.misses:
        print_misses(outcomes)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
