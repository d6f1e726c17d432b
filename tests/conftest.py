"""Shared test infrastructure: a real Mosquitto broker, a tiny real ONNX encoder, a clean env.

Real parts only: the broker is the installed ``mosquitto`` binary on a free loopback port with
its own config and persistence under ``tmp_path`` (so a test can stop and restart it); the
encoder is an ONNX graph built here and run by real onnxruntime / OpenVINO sessions.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_model import build_tiny_encoder


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STORELENS_* variable from the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("STORELENS_"):
            monkeypatch.delenv(key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Broker:
    """A real Mosquitto process; ``stop()`` / ``start()`` keep its port and persistence."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # started as root (CI containers), mosquitto would switch to user `mosquitto`, which cannot
            # write persistence/log under tmp_path: sessions would not survive stop()/start()
            "user root\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
        )
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )
    if path is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (the .ci/run script does this)")
    return path


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A running Mosquitto on a free loopback port, stopped after the test."""
    work = tmp_path / "broker"
    work.mkdir()
    b = Broker(port=free_port(), workdir=work)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real ONNX image encoder: (N, 3, 32, 32) float -> (N, 16) unit vectors."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    build_tiny_encoder(path, input_size=32, dim=16)
    return path


def shared_dir() -> Path:
    """The read-only ../shared folder beside the checkout (present in CI too).

    SHARED_DATA_DIR overrides it for a checkout that lives elsewhere.
    """
    env = os.environ.get("SHARED_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")]
    for c in candidates:
        if (c / "datasets").is_dir():
            return c
    raise FileNotFoundError(f"no shared/datasets folder in {candidates}: set SHARED_DATA_DIR")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
