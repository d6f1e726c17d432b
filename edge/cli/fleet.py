"""``storelens fleet status``: the chain's devices, their catalog and bundle, from retained MQTT topics."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edge.cli.catalog_fleet import mqtt_settings
from edge.cli.common import add_common


def register(sub: Any) -> None:
    p = sub.add_parser("fleet", help="see the chain's devices", description="The chain's devices and what they run.")
    fsub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    s = fsub.add_parser("status", help="devices, their catalog and bundle", description="List every device of the "
                        "chain (or --store) with its availability, image bundle, catalog version and installed "
                        "snapshot (refusals too), from the retained status topics; `current` says whether it runs "
                        "the snapshot its store announced.")
    s.add_argument("--broker", default=None, metavar="HOST:PORT", help="broker (default: [mqtt] of --config)")
    s.add_argument("--store", default="+", help="one store (default: all)")
    s.add_argument("--wait", type=float, default=2.0, help="seconds to gather retained messages (default 2)")
    s.add_argument("--json", action="store_true")
    add_common(s)
    s.set_defaults(func=run_status)


def run_status(args: argparse.Namespace) -> int:
    from edge.fleet.status import collect

    view = collect(mqtt_settings(args), store=args.store, wait_s=args.wait)
    rows = view.rows()
    if args.json:
        print(json.dumps({"devices": rows, "announced": view.announced}, indent=2))
        return 0
    print(f"{'store':<12} {'device':<12} {'online':<6} {'bundle':<17} {'catalog':>8} {'snapshot':<17} "
          f"{'current':<7} {'refused':>7}")
    for r in rows:
        print(f"{r['store']:<12} {r['device']:<12} {'yes' if r['online'] else 'no':<6} {r['bundle'] or '-':<17} "
              f"{r['catalog_version'] if r['catalog_version'] is not None else '-':>8} {r['snapshot'] or '-':<17} "
              f"{'yes' if r['current'] else 'no':<7} {r['refused']:>7}")
        if r["last_error"]:
            print(f"    last refusal: {r['last_error']}")
    print(f"{len(rows)} devices, {sum(r['online'] for r in rows)} online, {sum(r['current'] for r in rows)} on their "
          "store's announced snapshot")
    return 0
