"""Helpers for the operations tests (metrics, discovery, health, service): a runtime with the real tiny
parts running on a background thread, its config as a TOML file, and the ``storelens`` CLI as a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge.core.config import Settings, load_settings
from edge.pipeline.factory import assemble_runtime
from edge.pipeline.loop import Runtime
from tests.runtime_helpers import NumpyMatcher, TinyOnnxEncoder

REPO = Path(__file__).resolve().parents[1]
SKUS = ["RED", "GREEN", "BLUE", "YELLOW", "EMPTY"]


def base_config(tmp_path: Path, frames: Path, *, broker_port: int | None = None) -> dict[str, Any]:
    """A kiosk camera looping over ``frames``; MQTT on when a broker port is given."""
    return {
        "device": {"store": "s1", "id": "d1"},
        "catalog": {"data_dir": str(tmp_path / "data")},
        "cameras": [{"name": "cam", "source": str(frames), "fps": 30, "loop": True}],
        "gate": {"steady_frames": 1},
        "decision": {"window": 3, "min_frames": 2, "heartbeat_s": 3600},
        "mqtt": {"enabled": broker_port is not None, "host": "127.0.0.1", "port": broker_port or 1,
                 "stats_interval_s": 0.5, "reconnect_max_s": 1},
        "ocr": {"enabled": False},
    }


def merged(base: dict[str, Any], **over: Any) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_toml(data: dict[str, Any]) -> str:
    """Enough TOML for these configs: scalars, flat tables, arrays of flat tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(str(v))

    lines: list[str] = []
    for section, body in data.items():
        if isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {value(v)}" for k, v in body.items()]
        elif isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {value(v)}" for k, v in item.items() if not isinstance(v, list | dict)]
        else:
            lines.insert(0, f"{section} = {value(body)}")
    return "\n".join(lines) + "\n"


def write_config(path: Path, data: dict[str, Any]) -> Settings:
    """Write ``data`` as TOML and load it back (what the runtime and the CLI both read)."""
    path.write_text(to_toml(data), encoding="utf-8")
    return load_settings(path)


def make_runtime(settings: Settings, tiny_onnx: Path, catalog: Path, *, matcher: Any = None) -> Runtime:
    enc = TinyOnnxEncoder(tiny_onnx)
    return assemble_runtime(settings=settings, encoder=enc, matcher=matcher or NumpyMatcher(catalog, enc),
                            out=io.StringIO())


@contextmanager
def running(rt: Runtime) -> Iterator[Runtime]:
    """``rt`` started and looping on a thread; shut down (flushed) on exit."""
    stop = threading.Event()
    rt.start()
    t = threading.Thread(target=rt.run, args=(stop,), name="test-runtime", daemon=True)
    t.start()
    try:
        yield rt
    finally:
        stop.set()
        t.join(30)
        rt.shutdown()


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(interval)
    return cond()


def storelens(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess (``python -m edge.cli``), from the repository root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORELENS_")}
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
