"""``storelens validate-config FILE``: check a config, print each problem as key -> value -> message."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge.config import SettingsError, load_settings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "validate-config",
        help="check a config file (and STORELENS_* env overrides)",
        description="Validate a StoreLens TOML config with the environment overrides applied. Prints every "
        "problem as `key -> value -> message` and exits 2, or prints the resolved settings (secrets masked) and "
        "exits 0.",
    )
    p.add_argument("file", type=Path, help="TOML config file, e.g. configs/kiosk.toml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.file)
    except SettingsError as e:
        print(f"{args.file}: {len(e.problems)} problem(s)")
        for key, value, msg in e.problems:
            print(f"  {key} -> {value} -> {msg}")
        return e.exit_code
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return 0
