"""Drills, not promises: each fault against the real runtime and a real Mosquitto, and what it cost.

Every fault runs on a fresh device (:mod:`benchmarks._chaos_rig`): the real ``storelens run`` on a
real catalog :class:`~edge.catalog.store.Store` (the six demo products, the embedded image bundle,
the USearch i8 index) whose ``catalog.data_dir`` is a 3 MiB tmpfs (:mod:`benchmarks._disk`, root
only), a virtual kiosk camera looping the demo clip, a real Mosquitto behind a TCP gate, and a
subscriber keeping every match message. The device records every decision in its JSONL file
(on the normal disk); the table compares that record with what the subscriber received:

* **decided** — match messages the device decided (JSONL; for a SIGKILL also the rows its outbox
  held at the kill, written before the JSONL line);
* **delivered** / **lost** — decided and received / decided and never received;
* **erased** — for a file damaged before the start: queued messages on the pages the fault itself
  destroyed (what an independent reader cannot get back from the file either), kept apart from
  *lost* so neither hides the other;
* **duplicated** — ids received more than once (at-least-once delivery allows it after a cut);
* **corrupted** — received messages that are not byte-for-byte the JSON that was decided, or
  name no decision;
* **recovered** — the same process delivered its backlog and new decisions after the fault
  cleared, with no restart ("n/a" where the fault is the process's death or a start on damage).

    sudo python -m benchmarks.chaos [--only NAME,...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import _chaos_attacks, _chaos_faults, _chaos_fleet
from benchmarks._broker import Broker
from benchmarks._chaos_rig import FAULTS, Rig
from benchmarks._disk import can_mount

# -- the run -------------------------------------------------------------------------------------------

FAULT_MODULES = (_chaos_faults, _chaos_attacks, _chaos_fleet)  # importing them registers their faults
ORDER = ("disk-full-outage", "disk-full-after-outage", "outbox-truncated", "outbox-corrupted", "catalog-truncated",
         "catalog-corrupted", "clock-back", "clock-forward", "broker-restart", "broker-restart-fresh",
         "sigkill-install", "malicious-snapshots", "forged-flood")


def build_template(work: Path) -> tuple[Path, Path, tuple[float, float]]:
    """The catalog every device starts from, the camera clip, and the demo's calibrated thresholds."""
    import cv2

    from edge.catalog.store import Store
    from edge.core.config import ModelSettings
    from edge.models.encoders import load_image_encoder
    from edge.pipeline.demo import DEMO_PRODUCTS, VirtualCamera, calibrate_demo, reference_images

    encoder = load_image_encoder(ModelSettings())
    template, frames = work / "template", work / "frames"
    frames.mkdir(parents=True)
    cam = VirtualCamera(DEMO_PRODUCTS, hold=8, gap=4)
    i = 0
    while (f := cam.read()) is not None:
        cv2.imwrite(str(frames / f"{i:05d}.jpg"), f)
        i += 1
    store = Store(data_dir=template, image_encoder=encoder, dtype="i8")
    for p in DEMO_PRODUCTS:
        store.enroll(p.sku, name=p.name, images=reference_images(p))
    store.close()
    return template, frames, calibrate_demo(encoder)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("fault", "decided", "delivered", "lost", "erased", "duplicated", "corrupted", "recovered")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rec = {True: "yes", False: "NO", None: "n/a"}[r["recovered_without_restart"]]
        lines.append(f"| {r['fault']} | {r['decided']} | {r['delivered']} | {r['lost']} | {r['erased_by_fault']} | "
                     f"{r['duplicated']} | {r['corrupted']} | {rec} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help=f"comma-separated faults (default all): {', '.join(FAULTS)}")
    ap.add_argument("--json", type=Path, default=None, help="write {'faults': [...]} here")
    ap.add_argument("--keep", type=Path, default=None, help="work in this (new) folder and keep it: device logs")
    args = ap.parse_args(argv)
    if (why := can_mount()) is not None:
        print(f"chaos: {why}", file=sys.stderr)
        return 2
    names = [n for n in args.only.split(",") if n] or sorted(FAULTS, key=lambda n: (*ORDER, n).index(n))
    if unknown := [n for n in names if n not in FAULTS]:
        ap.error(f"unknown fault(s) {unknown}; choose from {list(FAULTS)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still unmount and stop the broker
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="storelens-chaos-") as tmp:
        work = args.keep or Path(tmp)
        template, frames, thresholds = build_template(work)
        broker = Broker.on_free_port(work / "broker")
        broker.start()
        try:
            rig = Rig(work, broker, template, frames, thresholds)
            for name in names:
                t = time.monotonic()
                row = FAULTS[name][0](rig, name)
                row["seconds"] = round(time.monotonic() - t, 1)
                rows.append(row)
                print(f"{name}: {json.dumps(row)}", flush=True)
        finally:
            broker.stop()
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": "python -m benchmarks.chaos " + " ".join(argv or sys.argv[1:]),
                                         "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
                                         "faults": rows}, indent=2) + "\n")
    bad = [r for r in rows if r["lost"] or r["corrupted"] or r["recovered_without_restart"] is False]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
