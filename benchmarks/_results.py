"""Writing a benchmark's result file (every ``--json OUT``), so each benchmark does not repeat it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, result: Any, *, indent: int = 2) -> None:
    """Write ``result`` as JSON to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent))
