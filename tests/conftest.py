"""Shared test infrastructure: a real Mosquitto broker, a tiny real ONNX encoder, a clean env.

Real parts only: the broker is the installed ``mosquitto`` binary (:mod:`benchmarks._broker`)
with its config and persistence under ``tmp_path`` (so a test can stop and restart it); the
encoder is an ONNX graph built here and run by real onnxruntime / OpenVINO sessions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks._broker import Broker
from tests.tiny_model import build_tiny_encoder


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STORELENS_* variable from the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("STORELENS_"):
            monkeypatch.delenv(key)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A running Mosquitto on a free loopback port, stopped after the test."""
    b = Broker.on_free_port(tmp_path / "broker")
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
