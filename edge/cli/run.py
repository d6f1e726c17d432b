"""``storelens run --config FILE``: the product's main job — cameras in, decisions out over MQTT."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from edge.core.config import load_settings
from edge.core.logs import setup_logging
from edge.pipeline.loop import Runtime

log = logging.getLogger("storelens.run")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="recognise products from the configured cameras and publish decisions (the main job)",
        description="Open every [[cameras]] source, embed changed regions, vote, and publish decisions over MQTT "
        "(QoS 1 through an on-disk outbox, so nothing is lost while the broker is away). Without a reachable "
        "broker (or with --no-mqtt) decisions are printed and kept in the outbox. SIGTERM / Ctrl-C stops capture, "
        "drains, flushes the outbox (mqtt.flush_timeout_s), publishes `offline` and exits 0.",
        epilog="example: storelens run --config configs/kiosk.toml --jsonl decisions.jsonl",
    )
    p.add_argument("--config", "-c", type=Path, required=True, help="TOML config, e.g. configs/kiosk.toml")
    p.add_argument("--jsonl", type=Path, help="also append every decision to this JSONL file (overrides jsonl_out)")
    p.add_argument("--no-mqtt", action="store_true", help="do not connect to a broker (print + outbox only)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: run until stopped)")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(func=run)


def serve(rt: Runtime, *, duration: float | None = None) -> dict[str, Any]:
    """Start, loop until SIGTERM/SIGINT (or ``duration``), then shut down gracefully; returns the summary."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rt.start()
        try:
            rt.run(stop, max_seconds=duration)
        finally:
            summary = rt.shutdown()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return summary


def run(args: argparse.Namespace) -> int:
    over: dict[str, Any] = {}
    if args.jsonl:
        over["jsonl_out"] = str(args.jsonl)
    if args.no_mqtt:
        over["mqtt"] = {"enabled": False}
    settings = load_settings(args.config, **over)  # overrides merge into the file's sections
    setup_logging("DEBUG" if getattr(args, "verbose", False) else settings.logging.level, settings.logging.format)
    if not settings.cameras:
        from edge.core.errors import ConfigError

        raise ConfigError(f"{args.config}: no [[cameras]] configured", hint="add a [[cameras]] table with a source")
    from edge.pipeline.capture import open_source

    for cam in settings.cameras:  # fail fast, before loading models: a wrong source names its camera
        open_source(cam).close()
    from edge.pipeline.factory import build_runtime

    summary = serve(build_runtime(settings), duration=args.duration)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(f"stopped: {summary['decisions']} decisions, {summary['frames']} frames, "
              f"outbox left {summary['outbox_left']} (dropped {summary['outbox']['dropped_full']} full, "
              f"{summary['outbox']['dropped_age']} old)")
    if (hint := never_steady_hint(summary, settings)) is not None:
        print(hint)
    return 0


def never_steady_hint(summary: dict[str, Any], settings: Any) -> str | None:
    """Why a run that saw frames decided nothing, when the gate never found a still view (else None)."""
    gate = summary.get("gate", {})
    if not summary.get("frames") or gate.get("embedded", 0) or not gate.get("skipped_unsteady"):
        return None
    held = {c.name: c.hold_frames for c in settings.cameras if c.mode == "kiosk"}
    return (f"nothing was recognised: no view held still for gate.steady_frames = {settings.gate.steady_frames} "
            f"frames (each image of a folder source is shown hold_frames times: {held}); set hold_frames = 15 in "
            "the camera's [[cameras]] table, or steady a live camera")

