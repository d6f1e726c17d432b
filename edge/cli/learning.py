"""``storelens catalog learned|forget-learned``: the photos learned from confirmations (edge.catalog.learning)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

from edge.catalog.learning import Learner
from edge.catalog.review import review_held
from edge.cli.common import open_store, settings_from_args
from edge.core.errors import InputError

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register_learning(csub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    f = csub.add_parser("forget-learned", help="remove photos learned from confirmations",
                        description="Remove learned photos (all, one product's, or those learned since a time) "
                        "through the writer: one transaction, catalog version bump, index swap. Enrolled catalog "
                        "photos are never touched; searches return what they returned before those were learned.")
    f.add_argument("--sku", default=None, help="only this product's learned photos")
    f.add_argument("--since", default=None, metavar="WHEN",
                   help="only photos learned at or after WHEN: ISO date/time (UTC unless it says), unix seconds, "
                   "or an age such as 2h, 3d")
    f.add_argument("--json", action="store_true", help="print the result as JSON")
    add_common(f)
    f.set_defaults(func=run_forget)

    ls = csub.add_parser("learned", help="list learned photos and held confirmations",
                         description="List the photos learned from confirmations (source, reference, time, cosine to "
                         "the product's photos) and the counts; --held lists the crops held for review instead.")
    ls.add_argument("--sku", default=None, help="only this product")
    ls.add_argument("--held", action="store_true", help="list the newest crops held for review (with their ids)")
    ls.add_argument("--approve", action="append", default=[], metavar="ID", help="learn this held crop as a photo "
                    "of its product after all (repeat for several)")
    ls.add_argument("--discard", action="append", default=[], metavar="ID", help="drop this held crop (repeat)")
    ls.add_argument("--json", action="store_true")
    add_common(ls)
    ls.set_defaults(func=run_list)


def parse_since(text: str | None, *, now: float | None = None) -> float | None:
    """``--since`` as unix seconds: an age (``90m``, ``2h``, ``3d``), unix seconds, or an ISO 8601 date/time."""
    if text is None:
        return None
    t = text.strip()
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    if m := _AGO.match(t):
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(t)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(t)
    except ValueError as e:
        raise InputError(f"--since {text!r} is not a time", hint="use e.g. 2026-12-01, 2026-12-01T14:00, 2h or 3d") \
            from e
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _learner(args: argparse.Namespace) -> Learner:
    return Learner(open_store(args, image=True, text=False), settings_from_args(args).learning)


def run_forget(args: argparse.Namespace) -> int:
    since = parse_since(args.since)
    learner = _learner(args)
    try:
        if args.sku is not None and learner.store.catalog.get(args.sku) is None:
            raise InputError(f"sku {args.sku!r} is not in the catalog", hint="`storelens catalog list` shows the skus")
        n = learner.forget(sku=args.sku, since=since)
        version = learner.store.catalog_version
    finally:
        learner.close()
        learner.store.close()
    if args.json:
        print(json.dumps({"forgotten": n, "sku": args.sku, "since": since, "catalog_version": version}))
    else:
        print(f"forgot {n} learned photo(s) (catalog version {version})" if n else "no learned photo matched")
    return 0


def run_list(args: argparse.Namespace) -> int:
    if args.approve or args.discard:
        return run_review(args)
    learner = _learner(args)
    try:
        stats = learner.stats()
        rows: list[dict[str, Any]] = learner.held() if args.held else [
            {"sku": p.sku, "source": p.source, "ref": p.ref, "learned_ts": p.learned_ts, "cosine": p.cosine,
             "path": p.path} for p in learner.learned(sku=args.sku)]
    finally:
        learner.close()
        learner.store.close()
    if args.held and args.sku is not None:
        rows = [r for r in rows if r["sku"] == args.sku]
    if args.json:
        print(json.dumps({"stats": stats, "held" if args.held else "learned": rows}, indent=2, ensure_ascii=False))
        return 0
    for r in rows:
        when = dt.datetime.fromtimestamp(r.get("learned_ts", r.get("ts", 0)), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        held_id = f"{r['id']}  " if args.held else ""
        print(f"{held_id}{when}  {r['sku']:<24} {r['source']:<8} cosine {r['cosine']:.3f}  {r['path']}")
    print(", ".join(f"{k} {v}" for k, v in stats.items()))
    return 0


def run_review(args: argparse.Namespace) -> int:
    """``--approve ID`` / ``--discard ID``: decide on crops held for review (edge.catalog.learning.Learner.review)."""
    learner = _learner(args)
    out: list[dict[str, Any]] = []
    try:
        for ids, approve in ((args.approve, True), (args.discard, False)):
            for rid in ids:
                result = review_held(learner, rid, approve=approve)
                out.append({"id": rid, "approved": approve, **(result.to_dict() if result else {})})
    finally:
        learner.close()
        learner.store.close()
    if args.json:
        print(json.dumps({"reviewed": out}, indent=2, ensure_ascii=False))
        return 0
    said = {"learned": "learned as a photo of {sku} (catalog version {catalog_version})",
            "duplicate": "adds nothing: {sku} already has a photo this close",
            "limited": "still held: {sku} reached learning.max_learned_per_hour, approve it again later"}
    for r in out:
        print(f"{r['id']}: " + (f"approved: {said[r['outcome']].format(**r)}" if r["approved"] else "discarded"))
    return 0
