"""``storelens service install [--user]``: a systemd unit that runs ``storelens run`` and restarts it."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge.core.config import load_settings
from edge.ops.systemd import SERVICE_NAME, UnitSpec, check_user, install, under_tmp, unit_dir, unit_text


def register(sub: Any) -> None:
    p = sub.add_parser(
        "service",
        help="install StoreLens as a systemd service (restart on failure, watchdog)",
        description="Manage the systemd unit that runs `storelens run --config FILE`.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    i = verbs.add_parser(
        "install",
        help="write the unit file (and an environment file for secrets)",
        description="Write <name>.service: Type=notify (READY=1 once the cameras are open), the watchdog fed "
        "from the frame loop (WatchdogSec), Restart=on-failure, and EnvironmentFile= for secrets such as "
        "STORELENS_MQTT__PASSWORD (created with mode 600 if missing). System units go to /etc/systemd/system "
        "(root), --user units to ~/.config/systemd/user. Nothing is started: the next commands are printed.",
        epilog="example: sudo \"$(command -v storelens)\" service install --config /etc/storelens/kiosk.toml "
        "--run-as storelens  (sudo does not see a virtual environment's PATH: give the full path)",
    )
    i.add_argument("--config", "-c", type=Path, required=True, help="the config the service runs")
    i.add_argument("--user", action="store_true", help="a user unit (systemctl --user) instead of a system unit")
    i.add_argument("--name", default=SERVICE_NAME, help="unit name without .service (default: %(default)s)")
    i.add_argument("--env-file", type=Path, default=None,
                   help="environment file for secrets (default: /etc/storelens/<name>.env, "
                   "or ~/.config/storelens/<name>.env with --user)")
    i.add_argument("--run-as", default=None, help="system units: the user to run as (User=); default root")
    i.add_argument("--watchdog", type=int, default=60, metavar="SECONDS",
                   help="restart when the frame loop has not fed the watchdog for this long (default: %(default)s)")
    i.add_argument("--unit-dir", type=Path, default=None, help="write the unit here instead of systemd's folder")
    i.add_argument("--print", dest="print_only", action="store_true", help="print the unit; write nothing")
    i.set_defaults(func=run_install)


def _spec(args: argparse.Namespace) -> UnitSpec:
    config = args.config.resolve()
    settings = load_settings(config)  # a broken config fails here, not at the first boot
    env = args.env_file or (Path.home() / ".config" / "storelens" / f"{args.name}.env" if args.user
                            else Path("/etc/storelens") / f"{args.name}.env")
    if args.run_as and not args.user:
        check_user(args.run_as)
    hidden = under_tmp(config, Path(sys.executable), settings.catalog.data_dir, env, Path.cwd())
    if hidden and not args.user:
        print(f"note: {', '.join(map(str, hidden))} under /tmp: the unit leaves PrivateTmp off so the service can "
              "see them; move them out of /tmp (e.g. /opt/storelens, /var/lib/storelens) for a production box",
              file=sys.stderr)
    return UnitSpec(config=config, env_file=env.resolve(), working_dir=Path.cwd().resolve(), user_unit=args.user,
                    run_as=args.run_as, watchdog_s=args.watchdog, python=sys.executable,
                    stop_timeout_s=int(settings.mqtt.flush_timeout_s) + 25, private_tmp=not hidden)


def run_install(args: argparse.Namespace) -> int:
    spec = _spec(args)
    if args.print_only:
        print(unit_text(spec), end="")
        return 0
    unit, created = install(spec, directory=args.unit_dir or unit_dir(user=args.user), name=args.name)
    print(f"wrote {unit}")
    print(f"environment file {spec.env_file}{' (created, mode 600): put secrets here' if created else ''}")
    verify = shutil.which("systemd-analyze")
    if verify:
        # the system manager's checks (syntax, ExecStart, directives) hold for a user unit too, and `--user`
        # needs a running user manager
        res = subprocess.run([verify, "verify", str(unit)], capture_output=True, text=True, check=False)
        print("systemd-analyze verify: " + ("ok" if res.returncode == 0 else (res.stderr or res.stdout).strip()))
    ctl = "systemctl --user" if args.user else "systemctl"
    if args.unit_dir is not None and args.unit_dir.resolve() != unit_dir(user=args.user).resolve():
        print(f"next: systemd does not read {args.unit_dir}: copy the unit to {unit_dir(user=args.user)}/, then "
              f"{ctl} daemon-reload && {ctl} enable --now {args.name}")
    else:
        print(f"next: {ctl} daemon-reload && {ctl} enable --now {args.name}")
    print(f"      storelens health --config {spec.config}    (journal: journalctl {'--user ' if args.user else ''}"
          f"-u {args.name} -f)")
    return 0
