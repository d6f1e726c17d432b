"""The test broker (benchmarks/_broker.py) owns its port: a port someone else took is an error quoting
Mosquitto's stderr (or, for a broker that never ran, a move to another free port), never a test that
talks to the wrong listener."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from benchmarks._broker import Broker, PortTaken, free_port


def test_taken_port_is_an_error_with_mosquittos_stderr(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        (tmp_path / "b").mkdir()
        fixed = Broker(port=port, workdir=tmp_path / "b")
        with pytest.raises(PortTaken, match=f"(?s)port {port}.*Address already in use"):
            fixed.start()  # the squatter accepts connections: only the dead process tells the truth
        assert fixed.proc is None and "Address already in use" in (tmp_path / "b" / "mosquitto.stderr").read_text()

        moving = Broker.on_free_port(tmp_path / "m")
        moving.port = port  # as if another process bound the free port between choosing and starting
        moving.start()
        try:
            assert moving.port != port and moving.proc is not None and moving.proc.poll() is None
            restarted_on = moving.port
            moving.stop()
            moving.start()  # a restart keeps its port (persistent sessions live there)
            assert moving.port == restarted_on
        finally:
            moving.stop()


def test_bad_config_is_an_error_not_a_timeout(tmp_path: Path) -> None:
    b = Broker(port=free_port(), workdir=tmp_path, extra_config="no_such_option 1\n")
    with pytest.raises(RuntimeError, match="exited with code"):
        b.start()
