"""``storelens validate-config FILE``: check a config, print each problem as key -> value -> message."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from edge.core.config import Settings, SettingsError, load_settings
from edge.core.errors import ConfigError, InputError
from edge.text.synonyms import load_synonyms


def register(sub: Any) -> None:
    p = sub.add_parser(
        "validate-config",
        help="check a config file (and STORELENS_* env overrides)",
        description="Validate a StoreLens TOML config with the environment overrides applied. Prints every "
        "problem as `key -> value -> message` and exits 2 (camera sources that are files, folders or globs must "
        "exist), or prints an OK summary and exits 0 (--show: every resolved setting, secrets masked).",
    )
    p.add_argument("file", type=Path, nargs="?", help="TOML config file, e.g. configs/kiosk.toml")
    p.add_argument("--reference", action="store_true", help="print every setting as a Markdown table and exit")
    p.add_argument("--show", action="store_true", help="also print every resolved setting as JSON (secrets masked)")
    p.set_defaults(func=run)


def _section(annotation: Any) -> type[BaseModel] | None:
    for a in (annotation, *get_args(annotation)):
        for b in (a, *get_args(a)):
            if isinstance(b, type) and issubclass(b, BaseModel):
                return b
    return None


def reference_rows(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every setting, nested keys dotted, list items as ``[]``."""
    rows: list[tuple[str, str, str]] = []
    for name, f in model.model_fields.items():
        key, sub = prefix + name, _section(f.annotation)
        if sub is not None and get_origin(f.annotation) is list:
            rows.append((key, "list", f.description or ""))
            rows += reference_rows(sub, key + "[].")
        elif sub is not None:
            rows += reference_rows(sub, key + ".")
        else:
            default = "required" if f.is_required() else ("" if f.default is None else f"`{f.default}`")
            rows.append((key, default, f.description or ""))
    return rows


def reference_markdown() -> str:
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{k}` | {d} | {m.replace('|', '/')} |" for k, d, m in reference_rows()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.reference:
        print(reference_markdown())
        return 0
    if args.file is None:
        raise InputError("no config file given", hint="storelens validate-config configs/kiosk.toml")
    try:
        settings = load_settings(args.file)
    except SettingsError as e:
        print(f"{args.file}: {len(e.problems)} problem(s)")
        for key, value, msg in e.problems:
            print(f"  {key} -> {value} -> {msg}")
        return e.exit_code
    try:  # the store's synonym file is read when the store opens: check it now
        load_synonyms(settings.catalog.synonyms, default=settings.catalog.default_synonyms)
    except ConfigError as e:
        print(f"{args.file}: 1 problem(s)\n  catalog.synonyms -> {settings.catalog.synonyms} -> {e}")
        return e.exit_code
    if problems := camera_problems(settings):
        print(f"{args.file}: {len(problems)} problem(s)")
        for key, value, msg in problems:
            print(f"  {key} -> {value!r} -> {msg}")
        return 2
    if args.show:
        print(json.dumps(settings.model_dump(mode="json"), indent=2))
    print(summary(args.file, settings))
    return 0


def camera_problems(settings: Settings) -> list[tuple[str, str, str]]:
    """Camera sources that cannot work (a missing file or folder, an empty one); devices are not opened."""
    from edge.pipeline.capture import source_problem

    return [(f"cameras[{i}].source", c.source, msg) for i, c in enumerate(settings.cameras)
            if (msg := source_problem(c.source)) is not None]


def summary(path: Path, s: Settings) -> str:
    """The OK line and what the box will do, in a few lines (``--show`` prints everything)."""
    cams = ", ".join(f"{c.name} ({c.mode}, source {c.source})" for c in s.cameras) or "none (add [[cameras]])"
    mqtt = f"{s.mqtt.host}:{s.mqtt.port}" if s.mqtt.enabled else "off"
    screen = f"http://{s.kiosk_screen.host}:{s.kiosk_screen.port}/" if s.kiosk_screen.enabled else "off"
    return (f"OK: {path} is a valid StoreLens config\n  device {s.device.store}/{s.device.id}; cameras: {cams}\n"
            f"  catalog in {s.catalog.data_dir.resolve()}; MQTT {mqtt}; kiosk screen {screen}\n"
            "  (--show prints every resolved setting)")
