"""Catalog snapshots: one catalog version as a folder of files a device can verify and install.

A snapshot folder holds ``catalog.db`` (a compact single-file copy, no WAL), each modality's
index (sidecar ``<modality>.index.json`` and the data file it names) and ``snapshot.json``:
every file's sha256 and size, the image (and text) bundle fingerprints, the index dtype, the
catalog version, counts and the assortment filter it was built with. The folder's name is the
snapshot id, the first 16 hex digits of the sha256 of that content (content-addressed: the same
files under the same bundles give the same id).

For distribution a snapshot travels as one uncompressed tar (``<id>.tar``, :func:`pack`,
deterministic: sorted names, zero mtimes) whose sha256 and size the announcement carries;
:func:`unpack` extracts one safely (flat regular files only, nothing outside the folder) and
:func:`verify` checks every file against ``snapshot.json`` before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tarfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.catalog import index as ix
from edge.core.errors import CatalogError

SCHEMA = "storelens.snapshot/1"
MANIFEST = "snapshot.json"
CATALOG_DB = "catalog.db"
ID_CHARS = 16
CHUNK = 1 << 20


class SnapshotError(CatalogError):
    """A snapshot that is corrupt, truncated, incomplete or made for another bundle: refused, never installed."""


@dataclass(frozen=True, kw_only=True)
class SnapshotManifest:
    """What ``snapshot.json`` says about a snapshot."""

    id: str
    catalog_version: int
    bundle: str  # the image bundle fingerprint its image vectors come from
    text_bundle: str | None
    dtype: str
    files: Mapping[str, Mapping[str, Any]]  # name -> {"sha256", "bytes"}
    counts: Mapping[str, int] = field(default_factory=dict)
    assortment: Mapping[str, Any] | None = None  # None: chain-wide
    created_utc: str = ""
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files": {k: dict(v) for k, v in self.files.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SnapshotManifest:
        if d.get("schema") != SCHEMA:
            raise SnapshotError(f"snapshot.json has schema {d.get('schema')!r}, not {SCHEMA!r}",
                                hint="build the snapshot with this StoreLens version's `storelens catalog build`")
        try:
            files = {str(k): {"sha256": str(v["sha256"]), "bytes": int(v["bytes"])} for k, v in d["files"].items()}
            return cls(id=str(d["id"]), catalog_version=int(d["catalog_version"]), bundle=str(d["bundle"]),
                       text_bundle=None if d.get("text_bundle") is None else str(d["text_bundle"]),
                       dtype=str(d["dtype"]), files=files, counts=dict(d.get("counts") or {}),
                       assortment=d.get("assortment"), created_utc=str(d.get("created_utc", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SnapshotError(f"snapshot.json is damaged: {type(e).__name__}: {e}",
                                hint="rebuild and republish the snapshot") from e

    def modalities(self) -> list[str]:
        return sorted(n.removesuffix(".index.json") for n in self.files if n.endswith(".index.json"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def content_id(files: Mapping[str, Mapping[str, Any]], *, bundle: str, text_bundle: str | None, dtype: str) -> str:
    canon = json.dumps({"files": files, "bundle": bundle, "text_bundle": text_bundle, "dtype": dtype},
                       sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:ID_CHARS]


def write_snapshot(data_dir: Path, out_root: Path, *, bundle: str, text_bundle: str | None, dtype: str,
                   counts: Mapping[str, int], assortment: Mapping[str, Any] | None) -> tuple[Path, SnapshotManifest]:
    """Copy the catalog in ``data_dir`` (nobody writing it) into ``out_root/<id>/``; returns the folder and manifest."""
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".building-{os.getpid()}-{time.time_ns():x}"
    tmp.mkdir()
    try:
        version = _copy_catalog(data_dir / CATALOG_DB, tmp / CATALOG_DB)
        for side in sorted(data_dir.glob("*.index.json")):
            meta = ix.read_meta(data_dir, side.name.removesuffix(".index.json"))
            if meta is None:
                continue
            shutil.copyfile(data_dir / meta.file, tmp / meta.file)
            shutil.copyfile(side, tmp / side.name)
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
        sid = content_id(files, bundle=bundle, text_bundle=text_bundle, dtype=dtype)
        manifest = SnapshotManifest(id=sid, catalog_version=version, bundle=bundle, text_bundle=text_bundle,
                                    dtype=dtype, files=files, counts=dict(counts), assortment=assortment,
                                    created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
        final = out_root / sid
        if final.exists():
            shutil.rmtree(tmp)  # the same content was built before: keep the first copy
            return final, read_manifest(final)
        os.replace(tmp, final)
        return final, manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _copy_catalog(src: Path, dst: Path) -> int:
    """A compact, self-contained copy of the catalog database (``VACUUM INTO``); returns its version."""
    db = sqlite3.connect(src)
    try:
        db.execute("VACUUM INTO ?", (str(dst),))
        row = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
    finally:
        db.close()
    return int(row[0]) if row else 0


def read_manifest(folder: Path) -> SnapshotManifest:
    path = folder / MANIFEST
    try:
        return SnapshotManifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise SnapshotError(f"{folder} is not a snapshot: it has no {MANIFEST}",
                            hint="pass a folder `storelens catalog build` wrote") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SnapshotError(f"{path} is not valid JSON: {e}", hint="rebuild and republish the snapshot") from e


def verify(folder: Path, *, bundle: str | None = None, text_bundle: str | None = None,
           dtype: str | None = None) -> SnapshotManifest:
    """Check every file against ``snapshot.json`` (set of names, sizes, sha256) and, when given, that it was
    built for this ``bundle``, text bundle and index ``dtype``. Raises :class:`SnapshotError` saying what is wrong."""
    m = read_manifest(folder)
    problems = []
    if bundle is not None and m.bundle != bundle:
        problems.append(f"it was built for image bundle {m.bundle}, this device runs {bundle}")
    if text_bundle is not None and m.text_bundle is not None and m.text_bundle != text_bundle:
        problems.append(f"its text vectors come from text bundle {m.text_bundle}, this device runs {text_bundle}")
    if dtype is not None and m.dtype != dtype:
        problems.append(f"its index dtype is {m.dtype}, this device uses {dtype} (catalog.index_dtype)")
    if problems:
        raise SnapshotError(f"snapshot {m.id} does not fit this device: " + "; ".join(problems),
                            hint="build a snapshot with the bundle and dtype the devices run, or update the devices")
    present = {p.name for p in folder.iterdir()} - {MANIFEST}
    if missing := sorted(set(m.files) - present):
        raise SnapshotError(f"snapshot {m.id} is incomplete: {', '.join(missing)} missing", hint="republish it")
    if extra := sorted(present - set(m.files)):
        raise SnapshotError(f"snapshot {m.id} has files its manifest does not list: {', '.join(extra)}",
                            hint="republish it")
    for name, want in sorted(m.files.items()):
        path = folder / name
        if path.stat().st_size != want["bytes"]:
            raise SnapshotError(f"snapshot {m.id}: {name} has {path.stat().st_size} bytes, the manifest says "
                                f"{want['bytes']} (truncated or altered)", hint="republish the snapshot")
        if sha256_file(path) != want["sha256"]:
            raise SnapshotError(f"snapshot {m.id}: {name} is corrupt (its sha256 differs from the manifest's)",
                                hint="republish the snapshot")
    if CATALOG_DB not in m.files:
        raise SnapshotError(f"snapshot {m.id} has no {CATALOG_DB}", hint="rebuild it with `storelens catalog build`")
    want_id = content_id(m.files, bundle=m.bundle, text_bundle=m.text_bundle, dtype=m.dtype)
    if want_id != m.id:
        raise SnapshotError(f"snapshot id {m.id} does not match its content ({want_id})", hint="republish it")
    return m


def pack(folder: Path, dest: Path) -> tuple[str, int]:
    """Write the snapshot folder as one deterministic tar at ``dest``; returns (sha256, bytes)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.iterdir()):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, dest)
    return sha256_file(dest), dest.stat().st_size


def unpack(archive: Path, dest: Path, *, max_files: int = 64, max_bytes: int | None = None) -> Path:
    """Extract a snapshot tar into ``dest`` (created; must not exist): flat regular files only, no sparse
    entries, their sizes together at most the archive's own size (an uncompressed tar cannot hold more) and
    ``max_bytes``; the extracted files are measured again on disk."""
    bound = archive.stat().st_size if max_bytes is None else min(archive.stat().st_size, max_bytes)
    try:
        with tarfile.open(archive, "r:") as tar:
            members = tar.getmembers()
            _check_members(archive, members, max_files=max_files, bound=bound)
            dest.mkdir(parents=True)
            tar.extractall(dest, members=members, filter="data")
        on_disk = sum(p.stat().st_size for p in dest.iterdir())
        if on_disk > bound:
            raise SnapshotError(f"snapshot archive {archive.name} unpacked to {on_disk} bytes, over its bound "
                                f"({bound})", hint="republish the snapshot with `storelens catalog publish`")
    except (tarfile.TarError, EOFError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise SnapshotError(f"snapshot archive {archive.name} is unreadable: {e}",
                            hint="republish the snapshot") from e
    except SnapshotError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def _check_members(archive: Path, members: list[tarfile.TarInfo], *, max_files: int, bound: int) -> None:
    if len(members) > max_files:
        raise SnapshotError(f"snapshot archive {archive.name} holds {len(members)} entries (at most {max_files})",
                            hint="republish the snapshot")
    for m in members:
        if not m.isreg() or m.issparse() or "/" in m.name or m.name in ("", ".", "..") or m.name.startswith("."):
            what = "a sparse file" if m.isreg() and m.issparse() else "not a plain file"
            raise SnapshotError(f"snapshot archive {archive.name} holds {m.name[:80]!r}, {what}",
                                hint="republish the snapshot with `storelens catalog publish`")
    total = sum(m.size for m in members)
    if total > bound:
        raise SnapshotError(f"snapshot archive {archive.name} would unpack to {total} bytes, more than its bound "
                            f"({bound})", hint="republish the snapshot with `storelens catalog publish`")
