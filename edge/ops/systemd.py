"""systemd integration: ``sd_notify`` (readiness, watchdog, status) and the service unit file.

``sd_notify`` is a datagram to the unix socket named by ``$NOTIFY_SOCKET`` (see sd_notify(3));
a few lines of socket code instead of a dependency. Outside systemd the variable is unset and
every call is a no-op. The watchdog is fed from the frame loop (:class:`SdNotifier.watchdog`
is called from the loop's tick), so a loop that hangs stops feeding it and systemd restarts
the service after ``WatchdogSec``.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.core.errors import InputError

SERVICE_NAME = "storelens"


class SdNotifier:
    """Sends ``READY=1``, ``WATCHDOG=1``, ``STATUS=...`` and ``STOPPING=1`` when systemd asked for them."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        addr = env.get("NOTIFY_SOCKET") or ""
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr  # '@' = Linux abstract namespace
        self.watchdog_s = self._watchdog_period(env)
        self._sock: socket.socket | None = None
        self._next_ping = 0.0
        self.sent = 0

    @staticmethod
    def _watchdog_period(env: dict[str, str]) -> float | None:
        """Seconds between pings: half of ``WATCHDOG_USEC`` (sd_watchdog_enabled(3)), if it is meant for us."""
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
            return None
        try:
            return max(0.05, int(usec) / 1e6 / 2)
        except ValueError:
            return None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` as one message (``KEY=value`` lines); False when there is no socket or it failed."""
        if not self.address:
            return False
        try:
            if self._sock is None:  # non-blocking: a full receive queue drops a ping, never stalls the loop
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "running") -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def watchdog(self, status: Callable[[], str] | None = None) -> bool:
        """Feed the watchdog if it is due (call as often as you like: pings are rate-limited).

        ``status`` is called only when a ping goes out; its line shows in ``systemctl status``.
        """
        if self.watchdog_s is None or not self.address:
            return False
        now = time.monotonic()
        if now < self._next_ping:
            return False
        self._next_ping = now + self.watchdog_s
        return self.notify("WATCHDOG=1", *([f"STATUS={status()}"] if status else []))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=stopping: flushing the outbox")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """What goes into the unit file; :func:`unit_text` writes it."""

    config: Path
    env_file: Path
    working_dir: Path
    user_unit: bool = False
    run_as: str | None = None  # system units only: User=
    watchdog_s: int = 60
    stop_timeout_s: int = 30
    python: str = sys.executable
    private_tmp: bool = True  # False when the service's own files live under /tmp (PrivateTmp would hide them)


def _quote(arg: str) -> str:
    """systemd's command-line quoting is close enough to the shell's for paths (no $ or % expected)."""
    return shlex.quote(arg).replace("%", "%%")


def unit_text(spec: UnitSpec) -> str:
    """A ``Type=notify`` unit that restarts on failure, with the watchdog and an environment file for secrets."""
    exec_start = " ".join(_quote(a) for a in (spec.python, "-m", "edge.cli", "run", "--config", str(spec.config)))
    unit = ["[Unit]", "Description=StoreLens on-device product recognition",
            "Documentation=file://" + str(spec.working_dir / "README.md")]
    if not spec.user_unit:
        unit += ["Wants=network-online.target", "After=network-online.target"]
    unit += ["StartLimitIntervalSec=300", "StartLimitBurst=10", ""]
    service = [
        "[Service]", "Type=notify", "NotifyAccess=main",
        f"ExecStart={exec_start}",
        f"WorkingDirectory={_quote(str(spec.working_dir))}",
        "# secrets (STORELENS_MQTT__PASSWORD, STORELENS_MQTT__COMMAND_TOKEN ...) live here, mode 0600",
        f"EnvironmentFile=-{spec.env_file}",
        "Environment=PYTHONUNBUFFERED=1",
        "Restart=on-failure", "RestartSec=5",
        f"WatchdogSec={spec.watchdog_s}",
        "TimeoutStartSec=180",  # READY=1 comes after the models and catalog are loaded and the cameras open
        f"TimeoutStopSec={spec.stop_timeout_s}",
        "KillSignal=SIGTERM",
    ]
    if not spec.user_unit:
        service += ([f"User={spec.run_as}"] if spec.run_as else []) + [
            "NoNewPrivileges=yes", "ProtectSystem=full"]
        service += ["PrivateTmp=yes"] if spec.private_tmp else [
            "# no PrivateTmp: the config, Python or catalog live under /tmp, which it would hide from the service"]
    install = ["", "[Install]", f"WantedBy={'default.target' if spec.user_unit else 'multi-user.target'}", ""]
    return "\n".join(unit + service + install)


def unit_dir(*, user: bool, home: Path | None = None) -> Path:
    """Where systemd looks for units the administrator (or, with ``user``, the user) installs."""
    if user:
        base = os.environ.get("XDG_CONFIG_HOME") or str((home or Path.home()) / ".config")
        return Path(base) / "systemd" / "user"
    return Path("/etc/systemd/system")


ENV_TEMPLATE = """\
# StoreLens service environment: secrets and overrides (STORELENS_<SECTION>__<KEY>=value).
# Keep this file readable by the service user only (chmod 600).
# STORELENS_MQTT__PASSWORD=
# STORELENS_MQTT__COMMAND_TOKEN=
"""


def install(spec: UnitSpec, *, directory: Path, name: str = SERVICE_NAME) -> tuple[Path, bool]:
    """Write ``<name>.service`` into ``directory`` and create the environment file (0600) if missing.

    Returns the unit path and whether a new environment file was created.
    """
    if not spec.config.is_file():
        raise InputError(f"config file not found: {spec.config}", hint="pass the config the service should run")
    unit = directory / f"{name}.service"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        unit.write_text(unit_text(spec), encoding="utf-8")
        created = not spec.env_file.exists()
        if created:
            spec.env_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(spec.env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(ENV_TEMPLATE)
    except PermissionError as e:
        raise InputError(f"cannot write {e.filename}: permission denied",
                         hint="run as root for a system unit, or add --user") from e
    return unit, created


TMP_ROOTS = (Path("/tmp"), Path("/var/tmp"))  # PrivateTmp=yes gives the service empty ones of its own


def under_tmp(*paths: Path) -> list[Path]:
    """Those of ``paths`` that a ``PrivateTmp=yes`` service could not see (they live under /tmp or /var/tmp)."""
    return [p for p in paths if any(p.resolve().is_relative_to(t.resolve()) for t in TMP_ROOTS)]


def check_user(name: str) -> None:
    """Raise :class:`InputError` when ``name`` is not a user on this machine (the service would fail at start)."""
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        raise InputError(f"--run-as {name!r}: no such user on this machine (the service would fail to start)",
                         hint=f"create it first, e.g. sudo useradd --system --home-dir /var/lib/storelens {name}, "
                         "or leave --run-as out to run as root") from None
