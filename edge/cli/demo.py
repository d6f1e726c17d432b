"""``storelens demo``: the main job end to end on a fresh machine — no camera, data, broker or network."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from edge.core.config import Settings, load_settings
from edge.core.logs import setup_logging

DEMO_MAX_S = 120.0  # the virtual clip ends well before this; a stuck demo stops here


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="self-contained demo: render a catalog, enroll it, recognise a virtual camera's frames",
        description="Renders six made-up products with OpenCV, enrolls them into a fresh catalog with the embedded "
        "image encoder (no retraining), then plays a virtual kiosk camera (each product held up in turn, with "
        "noise, shift and lighting changes, and an empty tray between) through the real runtime: gate, batched "
        "embedding, index search, voting, outbox and (with --broker) MQTT. Decisions are printed as they happen.",
        epilog="example: storelens demo            # or: storelens demo --broker localhost:1883",
    )
    p.add_argument("--workdir", type=Path, help="keep the catalog, index, outbox and decisions.jsonl here "
                   "(default: a temporary folder, removed afterwards)")
    p.add_argument("--fps", type=float, default=30.0, help="virtual camera frame rate (default 30)")
    p.add_argument("--broker", metavar="HOST:PORT", help="also publish to this MQTT broker")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_logging("DEBUG" if getattr(args, "verbose", False) else "WARNING")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return _demo(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="storelens-demo-") as tmp:
        return _demo(args, Path(tmp))


def _demo(args: argparse.Namespace, work: Path) -> int:
    import numpy as np

    from edge.catalog.store import Store
    from edge.models.encoders import load_image_encoder
    from edge.pipeline.demo import (
        DEMO_PRODUCTS,
        VirtualCamera,
        calibrate_demo,
        light_and_noise,
        reference_images,
        tray_background,
    )
    from edge.pipeline.factory import assemble_runtime

    settings = _settings(args, work)
    t0 = time.monotonic()
    encoder = load_image_encoder(settings.model)
    print(f"image encoder: embedded default bundle, fingerprint {encoder.fingerprint} ({encoder.dim}-d, "
          f"{settings.model.backend} {settings.model.precision})")
    threshold, margin = calibrate_demo(encoder)  # the demo's own `storelens calibrate`, on fresh renders
    settings = settings.model_copy(
        update={"decision": settings.decision.model_copy(update={"threshold": threshold, "margin": margin})})
    print(f"calibrated on fresh renders and the empty tray: threshold {threshold}, margin {margin}")
    store = Store.from_settings(settings, image_encoder=encoder, text_encoder=None)
    for p in tqdm(DEMO_PRODUCTS, desc="enroll", unit="product"):
        store.enroll(p.sku, name=p.name, images=reference_images(p))
    rng = np.random.default_rng(1)  # the bare tray as the catalog's empty entry: a kiosk item ends on it
    store.enroll(settings.decision.empty_sku, name="Empty tray",
                 images=[light_and_noise(tray_background(), rng, jitter=0.3) for _ in range(3)])
    print(f"catalog: {len(DEMO_PRODUCTS)} rendered products enrolled in {time.monotonic() - t0:.1f}s "
          f"(catalog version {store.catalog_version}); no retraining\n")

    camera = VirtualCamera(DEMO_PRODUCTS)
    print(f"virtual camera: {len(DEMO_PRODUCTS)} products held up in turn at {args.fps:g} fps; decisions:")
    rt = assemble_runtime(settings=settings, encoder=encoder, matcher=store, sources={"demo-cam": lambda: camera})
    from edge.cli.run import serve

    summary = serve(rt, duration=DEMO_MAX_S)
    store.close()
    return _report(args, work, summary, threshold=threshold, margin=margin, shown=[p.sku for p in DEMO_PRODUCTS])


def _settings(args: argparse.Namespace, work: Path) -> Settings:
    """A kiosk with one virtual camera, the catalog in ``work``, MQTT only with --broker."""
    mqtt: dict[str, Any] = {"enabled": False, "flush_timeout_s": 2.0}
    if args.broker:
        host, _, port = args.broker.rpartition(":")
        mqtt = {**mqtt, "enabled": True, "host": host or "localhost", "port": int(port or 1883)}
    return load_settings(
        None, device={"store": "demo", "id": "kiosk-demo"}, catalog={"data_dir": str(work / "data")},
        cameras=[{"name": "demo-cam", "source": "virtual", "fps": args.fps, "mode": "kiosk",
                  "rois": [{"name": "tray"}]}],
        decision={"window": 5, "min_frames": 3, "agreement": 0.6},
        gate={"steady_frames": 2}, mqtt=mqtt, jsonl_out=str(work / "decisions.jsonl"))


def _report(args: argparse.Namespace, work: Path, summary: dict[str, Any], *, threshold: float, margin: float,
            shown: list[str]) -> int:
    """Print what was recognised; exit 0 when every product was named once and nothing else."""
    decided = [json.loads(x) for x in (work / "decisions.jsonl").read_text().splitlines()]
    items = {d["item_id"]: d for d in decided if d.get("item_id")}  # each item's last word
    known = [d["candidates"][0]["sku"] for d in items.values() if d["decision"] == "known"]
    hits = sum(1 for sku in shown if sku in known)
    wrong = sorted({k for k in known if k not in shown})
    extra = max(0, len(known) - len(shown))  # a product named while the tray was empty, or one item counted twice
    result = {"products_shown": len(shown), "items": len(items), "recognised": hits, "wrong": wrong,
              "extra_known": extra,
              "threshold": threshold, "margin": margin, "decisions": summary["decisions"],
              "frames": summary["frames"], "embedded": summary["gate"]["embedded"],
              "gate_skip_ratio": summary["gate"]["skip_ratio"], "latency_ms": summary["latency_ms"],
              "outbox_left": summary["outbox_left"], "workdir": str(work) if args.workdir else None}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"\nrecognised {hits}/{len(shown)} products, {len(wrong)} wrong, {extra} extra; "
              f"{summary['frames']} frames, "
              f"{summary['gate']['embedded']} embedded (gate skipped {summary['gate']['skip_ratio']:.0%}); "
              f"decision latency p50 {summary['latency_ms']['p50']} ms")
        if not args.broker:
            print(outbox_note(summary["outbox_left"], args.workdir))
    return 0 if hits == len(shown) and not wrong and not extra else 1


def outbox_note(left: int, workdir: Path | None) -> str:
    """What became of the decisions without a broker: kept only when --workdir keeps the outbox."""
    if workdir is None:
        return (f"no broker: {left} messages were published to the outbox only (its temporary folder is deleted "
                "now; --workdir DIR keeps it, --broker HOST:PORT delivers them)")
    return f"no broker: {left} messages kept in the outbox ({workdir / 'data' / 'outbox.db'}) for later delivery"
