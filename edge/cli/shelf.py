"""``storelens shelf``: the shelf's daily report and planogram setup (:mod:`edge.shelf`).

- ``storelens shelf report --config FILE --since 24h [--json | --csv] [--html FILE]``: per facing
  and per product, share of time on shelf, time empty, alerts, median time to restock, from the
  history the running device keeps (``<catalog.data_dir>/shelf/history.db``);
- ``storelens shelf setup --config FILE --camera NAME --planogram TABLE --rows R --cols C``:
  regions from a grid over a snapshot of the camera, written as config, with an overlay to check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edge.core.config import load_settings
from edge.core.errors import InputError


def register(sub: Any) -> None:
    p = sub.add_parser("shelf", help="shelf availability: daily report, planogram setup",
                       description="Shelf cameras (mode = \"shelf\"): the report of the state history the running "
                       "device keeps, and the planogram regions set up from a grid.")
    s = p.add_subparsers(dest="shelf_command", metavar="ACTION", required=True)
    r = s.add_parser("report", help="per facing and product: time on shelf, time empty, alerts, time to restock",
                     epilog="example: storelens shelf report --config /etc/storelens/shelf.toml --since 24h --csv")
    r.add_argument("--config", "-c", type=Path, required=True, help="the config the shelf device runs with")
    r.add_argument("--since", default="24h", help="window ending now: 24h, 30m, 7d or seconds (default 24h)")
    fmt = r.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--csv", action="store_true", help="print CSV (one row per facing, then per product)")
    r.add_argument("--html", type=Path, default=None, help="also write the report as a small HTML page here")
    r.add_argument("--history", type=Path, default=None, help="read this history file instead of the config's")
    r.set_defaults(func=run_report)
    from edge.shelf.setup import register_setup

    register_setup(s)


def run_report(args: argparse.Namespace) -> int:
    from edge.shelf.history import ShelfHistory, history_path
    from edge.shelf.report import build_report, parse_duration, to_csv, to_html, to_text

    window = parse_duration(args.since)
    settings = load_settings(args.config)
    path = args.history or history_path(settings.catalog.data_dir)
    if not path.is_file():
        raise InputError(f"no shelf history at {path}",
                         hint="the running device writes it once a shelf camera's facings are seen "
                              "(storelens run with mode = \"shelf\" cameras); or pass --history FILE")
    history = ShelfHistory(path)
    try:
        until = time.time()
        report = build_report(history, until - window, until)
    finally:
        history.close()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    elif args.csv:
        sys.stdout.write(to_csv(report))
    else:
        print(to_text(report))
    if args.html is not None:
        args.html.write_text(to_html(report, title=f"Shelf report · {settings.device.store}"), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0
