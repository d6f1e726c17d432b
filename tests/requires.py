"""A test that needs a tool (a binary, an optional package) skips without it on a developer's box and
fails in CI (``CI`` set, as ``.ci/run`` and every CI service do): a missing tool there is a broken
install, and a skipped test would hide it."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str) -> NoReturn:
    """Skip with ``reason`` here; fail with it in CI (never returns)."""
    if in_ci():
        pytest.fail(f"CI is set and a tool this test needs is missing: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def need_module(name: str, hint: str) -> ModuleType:
    """``importlib.import_module(name)``, or :func:`missing` saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        missing(f"{name} is not importable ({e}): {hint}")
