"""The catalog announcement and getting the snapshot it names: HTTP(S) or a mounted folder, hash-checked.

An announcement is the retained message on ``storelens/<store>/catalog/available``::

    {"schema": "storelens.catalog-available/1", "version": 42, "snapshot": "<16 hex digits>",
     "url": "https://... | file:///mnt/... | /mnt/...", "sha256": "<of the tar>", "size": 123,
     "bundle": "<image bundle fingerprint>", "text_bundle": "...", "dtype": "i8",
     "manifest_sha256": "<of its snapshot.json>", "key": "<key id>", "signature": "<base64 Ed25519>"}

The signature (:mod:`edge.fleet.signing`) covers every field but ``url``, ``key`` and
``signature`` (:meth:`Announcement.signed_bytes`); a device checks it against
``fleet.trusted_keys`` before it downloads anything. :func:`download` then accepts only a URL
under ``fleet.allowed_urls`` (redirects too) or a file inside ``fleet.snapshot_dir``, streams
the archive to a local file while hashing it within ``fleet.download_timeout_s`` in all, and
refuses it (a :class:`~edge.catalog.snapshot.SnapshotError` saying which) when it is larger or
smaller than announced (truncated) or its sha256 differs (corrupt or replaced).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from edge.catalog.snapshot import CHUNK, ID_CHARS, SnapshotError

SCHEMA = "storelens.catalog-available/1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
SNAPSHOT_ID = re.compile(rf"^[0-9a-f]{{{ID_CHARS}}}$")  # a content id: safe in any path
STALL_S = 60.0  # one read or connect waits at most this long (and never past the total deadline)
UNSIGNED = ("url", "key", "signature")  # fields the signature does not cover


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
    manifest_sha256: str | None = None
    key: str | None = None  # id of the key that signed it
    signature: str | None = None
    schema: str = SCHEMA

    def to_payload(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    def signed_bytes(self) -> bytes:
        """What the signature covers: every field but the URL and the signature itself, canonical JSON."""
        d = {k: v for k, v in asdict(self).items() if k not in UNSIGNED}
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: Any) -> Announcement:
        """This announcement signed with an Ed25519 private key (:func:`edge.fleet.signing.sign`)."""
        from edge.fleet.signing import sign

        signer, sig = sign(replace(self, key=None, signature=None).signed_bytes(), key)
        return replace(self, key=signer, signature=sig)

    @classmethod
    def from_payload(cls, payload: bytes) -> Announcement:
        try:
            d: Any = json.loads(payload.decode("utf-8"))
            if not isinstance(d, dict):
                raise TypeError("not a JSON object")
            a = cls(version=int(d["version"]), snapshot=str(d["snapshot"]), url=str(d["url"]),
                    sha256=str(d["sha256"]).lower(), size=int(d["size"]), bundle=str(d["bundle"]),
                    text_bundle=None if d.get("text_bundle") is None else str(d["text_bundle"]),
                    dtype=None if d.get("dtype") is None else str(d["dtype"]), schema=str(d.get("schema", SCHEMA)),
                    **{k: None if d.get(k) is None else str(d[k]) for k in ("manifest_sha256", "key", "signature")})
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise SnapshotError(f"catalog announcement is not valid: {type(e).__name__}: {e}",
                                hint="publish it with `storelens catalog publish`") from e
        if a.schema != SCHEMA or not _HEX64.match(a.sha256) or a.size <= 0 or not a.url:
            raise SnapshotError(f"catalog announcement is not valid: schema {a.schema!r}, sha256 {a.sha256[:16]!r}, "
                                f"size {a.size}", hint="publish it with `storelens catalog publish`")
        if not SNAPSHOT_ID.match(a.snapshot):  # it names folders on the device: never a path
            raise SnapshotError(f"catalog announcement names snapshot {a.snapshot[:40]!r}, not a snapshot id "
                                f"({ID_CHARS} hex digits)", hint="publish it with `storelens catalog publish`")
        if a.manifest_sha256 is not None and not _HEX64.match(a.manifest_sha256):
            raise SnapshotError("catalog announcement is not valid: manifest_sha256 is not a sha256",
                                hint="publish it with `storelens catalog publish`")
        return a


def download(url: str, dest: Path, *, size: int, sha256: str, timeout_s: float, allowed_dir: Path | None,
             allowed_urls: Sequence[str] | None = None) -> None:
    """Fetch ``url`` into ``dest`` and check its size and sha256 (see the module docstring).

    ``timeout_s`` bounds the whole download; ``allowed_urls`` None allows any http(s) URL (tools
    on the publishing side), a device passes ``fleet.allowed_urls``.
    """
    deadline = time.monotonic() + timeout_s
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with _open(url, timeout_s=timeout_s, allowed_dir=allowed_dir, allowed_urls=allowed_urls) as src, \
                tmp.open("wb") as out:
            got, digest = _copy(src, out, limit=size, deadline=deadline, url=url)
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


def _copy(src: IO[bytes], out: IO[bytes], *, limit: int, deadline: float, url: str) -> tuple[int, str]:
    h = hashlib.sha256()
    got = 0
    read = getattr(src, "read1", src.read)  # one socket read at a time: the deadline is checked between them
    while chunk := read(CHUNK):
        got += len(chunk)
        if got > limit:
            raise SnapshotError(f"snapshot is larger than the announced {limit} bytes",
                                hint="republish it; the device keeps its current catalog")
        if time.monotonic() > deadline:
            raise SnapshotError(f"snapshot download from {url} took longer than fleet.download_timeout_s "
                                f"({got} of {limit} bytes in time)", hint="raise fleet.download_timeout_s for a "
                                "slow link, or check the server; the device keeps its current catalog")
        h.update(chunk)
        out.write(chunk)
    return got, h.hexdigest()


def url_allowed(url: str, allowed: Sequence[str]) -> bool:
    """True when ``url`` is http(s), names no user and no ``..`` segment, and lies under one of the ``allowed``
    prefixes: same scheme, host and port, and a path at or below the prefix's path."""
    p = urlsplit(url)
    if p.scheme not in ("http", "https") or not p.hostname or p.username or p.password:
        return False
    if ".." in unquote(p.path).split("/"):
        return False
    default = {"http": 80, "https": 443}
    for prefix in allowed:
        q = urlsplit(prefix)
        base = q.path if q.path.endswith("/") else q.path + "/"
        try:
            same_port = (p.port or default[p.scheme]) == (q.port or default.get(q.scheme, 0))
        except ValueError:  # a port that is not a number
            return False
        if p.scheme == q.scheme and p.hostname == q.hostname and same_port and \
                (p.path.startswith(base) or p.path == q.path):
            return True
    return False


def _check_url(url: str, allowed: Sequence[str] | None) -> None:
    if allowed is None or url_allowed(url, allowed):
        return
    raise SnapshotError(f"snapshot URL {url[:200]} is not under fleet.allowed_urls "
                        f"({', '.join(allowed) or 'empty: no HTTP(S) downloads'})",
                        hint="add the server's https://host/path/ prefix to fleet.allowed_urls on the devices")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL that is itself allowed."""

    def __init__(self, allowed: Sequence[str] | None) -> None:
        self.allowed = allowed

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        _check_url(newurl, self.allowed)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str, *, timeout_s: float, allowed_dir: Path | None, allowed_urls: Sequence[str] | None) -> IO[bytes]:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        _check_url(url, allowed_urls)  # before any connection: no probing of hosts the chain did not name
        opener = urllib.request.build_opener(_CheckedRedirects(allowed_urls))
        try:
            return opener.open(url, timeout=min(timeout_s, STALL_S))  # type: ignore[no-any-return]
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
