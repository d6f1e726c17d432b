"""The ``storelens`` command line.

Each subcommand lives in its own module under ``edge/cli/`` with a ``register(sub)``
function; this file only wires them up and turns :class:`StoreLensError` into a one-line
message and its exit code (``--verbose`` adds the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from edge import __version__
from edge.core.errors import StoreLensError
from edge.core.logs import setup_logging

# Order is the order `storelens --help` lists them in.
COMMAND_MODULES: tuple[str, ...] = (
    "edge.cli.run",
    "edge.cli.demo",
    "edge.cli.validate_config",
    "edge.cli.export",
    "edge.cli.recommend",
    "edge.cli.ocr",
    "edge.cli.catalog",
    "edge.cli.search",
    "edge.cli.calibrate",
    "edge.cli.health",
    "edge.cli.service",
    "edge.cli.fleet",
    "edge.cli.shelf",
)

log = logging.getLogger("storelens")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storelens",
        description="StoreLens: on-device product recognition and search for physical stores.",
        epilog="Run `storelens COMMAND --help` for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"storelens {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "export":
        args.rest = extra + list(args.rest)  # `storelens export --help`: the export tools' own help
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging("DEBUG" if args.verbose else "INFO")
    try:
        return int(args.func(args) or 0)
    except StoreLensError as e:
        if args.verbose:
            log.exception("command failed")
        print(f"storelens: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("storelens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
