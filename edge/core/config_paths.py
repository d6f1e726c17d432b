"""Relative paths in a config file are relative to that file's folder, not to the working directory.

``storelens catalog list --config /etc/storelens/kiosk.toml`` run from another folder must open
the same catalog as ``storelens run`` does; resolving ``catalog.data_dir = "var/storelens"``
against the working directory silently made a new, empty catalog there. Only paths written in
the file move: environment variables and command-line flags (``--data-dir``) are relative to
the working directory, as a shell user expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Every path setting a file may hold, as its dotted key.
FILE_PATH_KEYS = ("catalog.data_dir", "catalog.synonyms", "model.image_bundle", "model.text_bundle", "mqtt.enroll_dir",
                  "mqtt.tls.ca_file", "mqtt.tls.cert_file", "mqtt.tls.key_file", "fleet.snapshot_dir",
                  "health.status_file", "jsonl_out")


def relative_to_file(tree: dict[str, Any], path: Path) -> dict[str, Any]:
    """``tree`` (a parsed config file) with its relative path settings joined to ``path``'s folder (a copy)."""
    base = path.resolve().parent
    out = dict(tree)
    for dotted in FILE_PATH_KEYS:
        *sections, key = dotted.split(".")
        node = out
        for section in sections:  # copy each level on the way down: the caller's tree is left as it was
            if not isinstance(node.get(section), dict):
                break
            node[section] = node = dict(node[section])
        else:
            value = node.get(key)
            if isinstance(value, str) and value.strip() and not Path(value).expanduser().is_absolute():
                node[key] = str(base / value)
    return out
