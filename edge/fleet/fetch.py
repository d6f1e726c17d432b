"""The catalog announcement and getting the snapshot it names: HTTP(S) or a mounted folder, hash-checked.

An announcement is the retained message on ``storelens/<store>/catalog/available``::

    {"schema": "storelens.catalog-available/1", "version": 42, "snapshot": "<id>",
     "url": "https://... | file:///mnt/... | /mnt/...", "sha256": "<of the tar>", "size": 123,
     "bundle": "<image bundle fingerprint>", "text_bundle": "...", "dtype": "i8"}

:func:`download` streams the archive to a local file while hashing it, and refuses it (a
:class:`~edge.catalog.snapshot.SnapshotError` saying which) when it is larger or smaller than
announced (truncated) or its sha256 differs (corrupt or replaced). A file URL or path must lie
inside ``fleet.snapshot_dir``: an announcement never makes a device read arbitrary local files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from edge.catalog.snapshot import CHUNK, SnapshotError

SCHEMA = "storelens.catalog-available/1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def announce_topic(store: str) -> str:
    """Where a store's devices learn about new catalog snapshots (retained, QoS 1)."""
    return f"storelens/{store}/catalog/available"


@dataclass(frozen=True, kw_only=True)
class Announcement:
    version: int
    snapshot: str
    url: str
    sha256: str
    size: int
    bundle: str
    text_bundle: str | None = None
    dtype: str | None = None
    schema: str = SCHEMA

    def to_payload(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> Announcement:
        try:
            d: Any = json.loads(payload.decode("utf-8"))
            if not isinstance(d, dict):
                raise TypeError("not a JSON object")
            a = cls(version=int(d["version"]), snapshot=str(d["snapshot"]), url=str(d["url"]),
                    sha256=str(d["sha256"]).lower(), size=int(d["size"]), bundle=str(d["bundle"]),
                    text_bundle=None if d.get("text_bundle") is None else str(d["text_bundle"]),
                    dtype=None if d.get("dtype") is None else str(d["dtype"]), schema=str(d.get("schema", SCHEMA)))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise SnapshotError(f"catalog announcement is not valid: {type(e).__name__}: {e}",
                                hint="publish it with `storelens catalog publish`") from e
        if a.schema != SCHEMA or not _HEX64.match(a.sha256) or a.size <= 0 or not a.url:
            raise SnapshotError(f"catalog announcement is not valid: schema {a.schema!r}, sha256 {a.sha256[:16]!r}, "
                                f"size {a.size}", hint="publish it with `storelens catalog publish`")
        return a


def download(url: str, dest: Path, *, size: int, sha256: str, timeout_s: float, allowed_dir: Path | None) -> None:
    """Fetch ``url`` into ``dest`` and check its size and sha256 (see the module docstring)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with _open(url, timeout_s=timeout_s, allowed_dir=allowed_dir) as src, tmp.open("wb") as out:
            got, digest = _copy(src, out, limit=size)
        if got < size:
            raise SnapshotError(f"snapshot download from {url} is truncated: {got} of {size} bytes",
                                hint="check the file on the server; the device keeps its current catalog")
        if digest != sha256:
            raise SnapshotError(f"snapshot download from {url} is corrupt: its sha256 {digest[:16]}… is not the "
                                f"announced {sha256[:16]}…", hint="republish the snapshot; the device keeps its "
                                "current catalog")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _copy(src: IO[bytes], out: IO[bytes], *, limit: int) -> tuple[int, str]:
    h = hashlib.sha256()
    got = 0
    while chunk := src.read(CHUNK):
        got += len(chunk)
        if got > limit:
            raise SnapshotError(f"snapshot is larger than the announced {limit} bytes",
                                hint="republish it; the device keeps its current catalog")
        h.update(chunk)
        out.write(chunk)
    return got, h.hexdigest()


def _open(url: str, *, timeout_s: float, allowed_dir: Path | None) -> IO[bytes]:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        try:
            return urllib.request.urlopen(url, timeout=timeout_s)  # type: ignore[no-any-return]
        except (urllib.error.URLError, OSError) as e:
            raise SnapshotError(f"cannot download the snapshot from {url}: {e}",
                                hint="check the server and the device's network; it keeps its current catalog") from e
    if parts.scheme not in ("", "file"):
        raise SnapshotError(f"snapshot URL scheme {parts.scheme!r} is not supported", hint="use https://, http://, "
                            "file:// or a path inside fleet.snapshot_dir")
    path = Path(unquote(parts.path) if parts.scheme == "file" else url)
    if allowed_dir is None:
        raise SnapshotError(f"snapshot {url} is a file, but fleet.snapshot_dir is not set on this device",
                            hint="set fleet.snapshot_dir to the mounted snapshot folder, or publish over HTTP(S)")
    root = allowed_dir.resolve()
    real = path.resolve() if path.is_absolute() else (root / path).resolve()
    if not real.is_relative_to(root):
        raise SnapshotError(f"snapshot {url} is outside fleet.snapshot_dir ({root})", hint="publish it there")
    try:
        return real.open("rb")
    except OSError as e:
        raise SnapshotError(f"cannot read the snapshot {real}: {e}", hint="check the mount") from e


def copy_into(src: Path, dest_dir: Path) -> Path:
    """Copy a file into a folder atomically (write beside, then rename); returns the new path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    tmp = dest_dir / f".{src.name}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest
