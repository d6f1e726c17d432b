"""A real Mosquitto for tests and benchmarks: the installed binary on a free loopback port.

Each broker has its own config, persistence and log under ``workdir``, so ``stop()`` and
``start()`` keep its port and its persistent sessions (tests restart a broker to check that
nothing is lost). Never imported by edge/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def mosquitto_binary() -> str:
    """The installed ``mosquitto``; FileNotFoundError saying how to install it when there is none."""
    path = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None)
    if path is None:
        raise FileNotFoundError("mosquitto is not installed: apt-get install -y mosquitto (the .ci/run script does)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class PortTaken(RuntimeError):
    """Mosquitto could not bind its port: another process holds it."""


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


@dataclass
class Broker:
    """A Mosquitto process on ``port``; ``extra_config`` lines are appended (limits, TLS, passwords)."""

    port: int
    workdir: Path
    anonymous: bool = True
    extra_config: str = ""
    pick_port: bool = False  # True: start() may move to another free port if this one is taken
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def on_free_port(cls, workdir: Path, **kw: object) -> Broker:
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(port=free_port(), workdir=workdir, pick_port=True, **kw)  # type: ignore[arg-type]

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self) -> None:
        """Start Mosquitto and return once *this* process listens on ``port``.

        Its stderr is kept in ``workdir/mosquitto.stderr``; a process that exits (port taken, bad config)
        is an error quoting it. A broker from :meth:`on_free_port` that has never run takes another free
        port when its port was taken in the meantime (a free port is only free until someone binds it).
        """
        for _ in range(5):
            try:
                self._start_once()
                self.pick_port = False  # from now on the port stays (tests restart the broker on it)
                return
            except PortTaken:
                if not self.pick_port:
                    raise
                self.port = free_port()
        self._start_once()

    def _start_once(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if self.anonymous else 'false'}\n"
            # started as root (CI containers), mosquitto would switch to user `mosquitto`, which cannot
            # write persistence/log under workdir: sessions would not survive stop()/start()
            "user root\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
            "log_dest stderr\n" + self.extra_config)
        err_path = self.workdir / "mosquitto.stderr"
        with err_path.open("ab") as err:
            offset = err.tell()
            self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                         stderr=err)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            said = _read_from(err_path, offset)
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                kind = PortTaken if "Address already in use" in said else RuntimeError
                raise kind(f"mosquitto exited with code {rc} on port {self.port}: {said.strip()[-2000:]}")
            if " running" in said:  # printed once its listeners are open
                wait_port(self.port)
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"mosquitto did not start on port {self.port} within {START_TIMEOUT_S}s; "
                           f"stderr: {_read_from(err_path, offset).strip()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def mosquitto_version() -> str:
    """The first line of ``mosquitto -h`` (its version), for benchmark reports."""
    out = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True)
    lines = (out.stdout or out.stderr).splitlines()
    return lines[0] if lines else "?"
