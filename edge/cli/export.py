"""``storelens export ...``: the build-time tools, present only with the ``export`` extra.

edge/ never imports export/ statically (the runtime install has no torch); this command
loads it on demand and says how to install it when it is missing.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from edge.core.errors import StoreLensError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="train, export, quantize and bundle encoders (needs the export extra)",
        description="Build-time tools: train | onnx | bundle | text. Needs `pip install 'storelens[export]'`. "
        "Run `storelens export TOOL --help`.",
        add_help=False,
    )
    p.add_argument("rest", nargs=argparse.REMAINDER, help="tool and its arguments")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        mod = importlib.import_module("export.cli")
    except ImportError as e:
        raise StoreLensError(
            f"the export tools are not installed ({e.name or e})",
            hint="pip install 'storelens[export]' (pulls torch 2.13.0 CPU, onnx, nncf)",
        ) from e
    return int(mod.main(list(args.rest)))
