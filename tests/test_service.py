"""`storelens service install`: the unit file it writes, checked by systemd's own `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.ops_helpers import storelens, write_config
from tests.requires import missing

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "kiosk.toml"
    path.parent.mkdir()
    write_config(path, {"device": {"store": "s1", "id": "d1"}, "catalog": {"data_dir": str(tmp_path / "data")},
                        "mqtt": {"flush_timeout_s": 7}})
    return path


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_install_writes_a_unit_systemd_accepts(tmp_path: Path, config: Path, user: bool) -> None:
    units, env = tmp_path / "units", tmp_path / "secrets" / "storelens.env"
    args = ["service", "install", "--config", str(config), "--unit-dir", str(units), "--env-file", str(env),
            "--name", "storelens-test", "--watchdog", "45"]
    res = storelens(*args, *(["--user"] if user else ["--run-as", "daemon"]))
    assert res.returncode == 0, res.stderr
    unit = units / "storelens-test.service"
    text = unit.read_text()
    lines = set(text.splitlines())
    assert {"Type=notify", "Restart=on-failure", "WatchdogSec=45", f"EnvironmentFile=-{env}",
            "TimeoutStopSec=32"} <= lines
    assert any(ln.startswith("ExecStart=") and ln.endswith(f"-m edge.cli run --config {config}") for ln in lines)
    assert ("WantedBy=default.target" in lines) == user and ("User=daemon" in lines) == (not user)
    assert stat.S_IMODE(env.stat().st_mode) == 0o600 and "STORELENS_MQTT__PASSWORD" in env.read_text()
    assert f"wrote {unit}" in res.stdout and "daemon-reload" in res.stdout
    assert SYSTEMD_ANALYZE is None or "systemd-analyze verify: ok" in res.stdout, res.stdout
    if SYSTEMD_ANALYZE is None:
        missing("systemd-analyze is not installed here: the unit file was written but not verified by systemd "
                "(apt-get install -y systemd; .ci/run installs it)")
    check = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, check=False)
    assert check.returncode == 0 and check.stderr.strip() == "", check.stderr


def test_print_and_a_kept_env_file(tmp_path: Path, config: Path) -> None:
    env = tmp_path / "mine.env"
    env.write_text("STORELENS_MQTT__PASSWORD=secret\n")
    res = storelens("service", "install", "--config", str(config), "--env-file", str(env), "--print")
    assert res.returncode == 0 and res.stdout.startswith("[Unit]") and "Type=notify" in res.stdout
    assert env.read_text() == "STORELENS_MQTT__PASSWORD=secret\n"  # never overwritten
    bad = storelens("service", "install", "--config", str(tmp_path / "missing.toml"), "--print")
    assert bad.returncode == 2 and "config file not found" in bad.stderr
