"""``python -m benchmarks._chaos_launch ARGS...``: the real ``storelens`` CLI with a steppable wall clock.

The chaos drill (:mod:`benchmarks.chaos`) steps the device's clock a year back or forward while it
runs. Stepping the machine's real clock would disturb every other process on it (and needs
CAP_SYS_TIME); libfaketime is not installed. So this launcher gives the one process under test an
injectable wall clock instead: ``time.time`` (what every StoreLens wall-clock read goes through)
becomes ``real + offset``, where the offset is read from the file named by ``CHAOS_CLOCK_FILE``
(seconds, re-read every :data:`POLL_S`; a missing file is 0). The monotonic clock is left alone,
as a real clock step leaves it. ``CHAOS_PRUNE_EVERY_S`` shortens how often the outbox worker
prunes old messages (60 s in production) so a drill sees the pruning a step would cause within
seconds. Everything else is the unmodified ``storelens`` entry point.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

POLL_S = 0.1


def install_clock(path: Path) -> None:
    """Make ``time.time`` return the real time plus the offset kept in ``path``."""
    real = time.time
    offset = [0.0]

    def read() -> None:
        while True:
            try:
                offset[0] = float(path.read_text().strip() or 0)
            except (OSError, ValueError):
                offset[0] = 0.0
            time.sleep(POLL_S)

    threading.Thread(target=read, name="chaos-clock", daemon=True).start()
    time.time = lambda: real() + offset[0]


def main() -> int:
    if clock := os.environ.get("CHAOS_CLOCK_FILE"):
        install_clock(Path(clock))
    if prune := os.environ.get("CHAOS_PRUNE_EVERY_S"):
        import edge.comms.mqtt

        edge.comms.mqtt.PRUNE_EVERY_S = float(prune)
    from edge.cli.main import main as storelens

    return storelens(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
