"""``storelens health``: is the running device healthy? Exit 0 if so, 1 naming each part that is not."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from edge.core.config import DeviceSettings, load_settings
from edge.ops.health import STATUS_FILE, Thresholds, evaluate, read_status, report


def register(sub: Any) -> None:
    p = sub.add_parser(
        "health",
        help="check the running device: cameras, broker, outbox, frame loop (exit 1 when unhealthy)",
        description="Read the status file the running `storelens run` rewrites from its frame loop "
        "(<catalog.data_dir>/health.json) and judge it against the [health] thresholds of the same config. "
        "Exits 0 when healthy, 1 when any check fails: `runtime` (not running), `loop` (frame loop stalled), "
        "`camera` (down too long), `mqtt` (broker unreachable too long), `outbox` (near its bound), "
        "`disk` (the outbox holds messages in memory: the disk refuses writes). "
        "Each failure is printed as `check: reason`.",
        epilog="example: storelens health --config /etc/storelens/kiosk.toml --json",
    )
    p.add_argument("--config", "-c", type=Path, default=None,
                   help="the config the runtime runs with (data dir and [health] thresholds); default: built-ins")
    p.add_argument("--status-file", type=Path, default=None, help="read this status file instead")
    p.add_argument("--json", action="store_true", help="print the checks and the status as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    over: dict[str, Any] = {}
    if args.config is None:  # no config: the built-in data dir and thresholds
        over["device"] = DeviceSettings(store="local", id="health").model_dump()
    settings = load_settings(args.config, **over)
    h = settings.health
    th = Thresholds.from_settings(h)
    path = args.status_file or h.status_file or settings.catalog.data_dir / STATUS_FILE
    status = read_status(path)
    problems = evaluate(status, th, path=path)
    if args.json:
        print(json.dumps({**report(problems, status, th), "status_file": str(path)}, indent=2))
    elif problems:
        print("UNHEALTHY")
        for p in problems:
            print(f"  {p}")
    else:
        print(f"healthy: {summary(status or {})}")
    return 1 if problems else 0


def summary(status: dict[str, Any]) -> str:
    cams = status.get("cameras", {})
    ok = sum(1 for c in cams.values() if c.get("state") == "ok")
    mqtt = status.get("mqtt", {})
    broker = "off" if not mqtt.get("enabled") else ("connected" if mqtt.get("connected") else "reconnecting")
    ob = status.get("outbox", {})
    age = time.time() - float(status.get("ts", time.time()))
    return (f"cameras {ok}/{len(cams)} ok, mqtt {broker}, outbox {ob.get('depth', 0)}/{ob.get('max', 0)}, "
            f"heartbeat {age:.1f} s ago")
