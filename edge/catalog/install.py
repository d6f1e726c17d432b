"""Installing a verified catalog snapshot into a store's catalog, through the writer's path.

Before anything is written, :func:`edge.catalog.snapshot_checks.check_snapshot` proves the
snapshot's indexes fit the manifest, the device and the rows, and that each graph loads and
answers a probe search in a child process; a snapshot that fails is refused with the device's
catalog untouched. Only the chain's tables (:data:`CHAIN_TABLES`: products, their photos, texts
and vectors) come from a snapshot: the device's own tables (learned photos, the learning review
queue and counts, whose rows name files the device deletes) and its ``meta`` (calibration,
fusion weights, anything device-local) are never read from one; the catalog version comes from
the verified manifest.

The same steps as every catalog write (:mod:`edge.catalog.writer`): the writer lock, each
index saved as the next generation and swapped in by :func:`edge.catalog.index.publish`, one
SQLite transaction for the rows, then the store's :meth:`~edge.catalog.store.Store.reload`. The
rows are replaced inside that one transaction (the snapshot's database attached, every catalog
table emptied and refilled), so a reader sees the old catalog or the new one, never a mix. The
catalog version becomes the snapshot's, and ``meta.snapshot`` records what is installed and the
snapshots before it (what ``rollback`` returns to).

``pause`` (the runtime's model lock) is taken only for the commit and the index reload, so the
frame loop never matches with the new rows and the old index; the long part (copying rows,
writing index files) runs while frames are still matched on the old catalog.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge.catalog import index as ix
from edge.catalog.learned_carry import restore_learned, take_learned
from edge.catalog.learning import IMAGE, unlink_files
from edge.catalog.snapshot import CATALOG_DB, SnapshotError, SnapshotManifest
from edge.catalog.snapshot_checks import check_snapshot
from edge.catalog.views import VIEWS_MODALITY
from edge.core.sqlite import connect, transaction

log = logging.getLogger("storelens.snapshot")

SNAPSHOT_META = "snapshot"  # meta key: {"current": {...}, "previous": [{...}, ...]}
HISTORY = 10  # previous snapshots remembered in meta.snapshot
_FTS_SHADOWS = ("_data", "_idx", "_content", "_docsize", "_config")
CHAIN_TABLES = frozenset({"products", "images", "product_text", "vectors", "products_fts"})  # what a snapshot sets


class InstallTarget(Protocol):
    """What an install needs from a :class:`~edge.catalog.store.Store`."""

    data_dir: Path
    dtype: str
    image_encoder: Any  # ImageEncoder | None: its fingerprint and dim are checked against the snapshot
    text_encoder: Any  # TextEncoder | None

    def reload(self) -> bool: ...


@dataclass(frozen=True, kw_only=True)
class Installed:
    """One installed snapshot, as ``meta.snapshot`` records it."""

    id: str
    sha256: str
    catalog_version: int
    bundle: str
    installed_utc: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "sha256": self.sha256, "catalog_version": self.catalog_version, "bundle": self.bundle,
                "installed_utc": self.installed_utc}


def installed_state(data_dir: Path) -> dict[str, Any]:
    """``meta.snapshot`` of the catalog in ``data_dir``: ``{"current": {...} | None, "previous": [...],
    "rolled_back_from": {...} | None}``."""
    path = data_dir / CATALOG_DB
    if not path.is_file():
        return {"current": None, "previous": [], "rolled_back_from": None}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (SNAPSHOT_META,)).fetchone()
    except sqlite3.Error:
        row = None
    finally:
        db.close()
    state = json.loads(row[0]) if row else {}
    return {"current": state.get("current"), "previous": list(state.get("previous") or []),
            "rolled_back_from": state.get("rolled_back_from")}


def install(store: InstallTarget, folder: Path, manifest: SnapshotManifest, *, sha256: str,
            pause: Callable[[], AbstractContextManager[Any]] | None = None, rollback: bool = False) -> Installed:
    """Install the verified snapshot in ``folder`` into ``store`` (see the module docstring)."""
    data_dir = store.data_dir
    text = store.text_encoder
    check_snapshot(folder, manifest, dtype=store.dtype,  # before the lock and any write: refused means untouched
                   encoders={IMAGE: store.image_encoder, "text": text, VIEWS_MODALITY: text})
    entry = Installed(id=manifest.id, sha256=sha256, catalog_version=manifest.catalog_version,
                      bundle=manifest.bundle, installed_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    with ix.writer_lock(data_dir), ExitStack() as paused:
        state = installed_state(data_dir)
        history = _history(state, entry, rollback=rollback)
        db = connect(data_dir / CATALOG_DB)  # no cascades while refilling; checked before the commit instead
        db.execute("PRAGMA wal_autocheckpoint = 0")  # the commit must not copy the whole catalog while paused
        try:
            db.execute("ATTACH DATABASE ? AS snap", (f"file:{folder / CATALOG_DB}?mode=ro",))
            with transaction(db):
                carried = take_learned(db)  # the shop floor's photos are this device's: they stay
                _replace_rows(db)
                learned, dropped = restore_learned(db, carried, fingerprint=_image_fingerprint(folder, manifest))
                for key, value in (("version", str(manifest.catalog_version)), (SNAPSHOT_META, json.dumps(history))):
                    db.execute("INSERT INTO main.meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE "
                               "SET value = excluded.value", (key, value))
                _publish_indexes(data_dir, folder, manifest, learned)  # a failure above leaves the indexes untouched
                if pause is not None:
                    paused.enter_context(pause())  # held from the commit to the reload below
            db.execute("DETACH DATABASE snap")
        finally:
            db.close()
        store.reload()
    unlink_files(dropped)
    _checkpoint(data_dir / CATALOG_DB)  # after the pause: frames are matched again while the WAL is copied back
    log.info("catalog snapshot installed", extra={"snapshot": manifest.id, "catalog_version": entry.catalog_version,
                                                   "rollback": rollback, "learned_kept": len(learned),
                                                   "learned_dropped": len(dropped)})
    return entry


def _checkpoint(path: Path) -> None:
    db = connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error as e:  # a reader holding an old snapshot: the next checkpoint catches up
        log.info("catalog checkpoint after a snapshot install deferred: %s", e)
    finally:
        db.close()


def _history(state: dict[str, Any], entry: Installed, *, rollback: bool) -> dict[str, Any]:
    previous = [p for p in state["previous"] if p.get("id") != entry.id]
    if state["current"] and state["current"].get("id") != entry.id and not rollback:
        previous = [state["current"], *previous]
    out: dict[str, Any] = {"current": entry.to_dict(), "previous": previous[:HISTORY]}
    if rollback and state["current"]:
        out["rolled_back_from"] = state["current"]  # its announcement is not installed again
    return out


def _image_fingerprint(folder: Path, manifest: SnapshotManifest) -> str | None:
    meta = ix.read_meta(folder, IMAGE) if IMAGE in manifest.modalities() else None
    return meta.fingerprint if meta else None


def _publish_indexes(data_dir: Path, folder: Path, manifest: SnapshotManifest,
                     learned: list[tuple[int, np.ndarray]]) -> None:
    """Each of the snapshot's indexes as the next generation (stamped with its catalog version), the device's
    ``learned`` image vectors added; a modality the snapshot lacks loses its index (its vectors go with the rows)."""
    wanted = set(manifest.modalities())
    for modality in sorted(wanted):
        meta = ix.read_meta(folder, modality)
        if meta is None:
            raise SnapshotError(f"snapshot {manifest.id}: {modality}.index.json is missing", hint="republish it")
        index = ix.new_usearch(meta)
        index.load(str(folder / meta.file))
        products = meta.products
        if modality == IMAGE and learned:
            keys = np.fromiter((k for k, _ in learned), dtype=np.uint64, count=len(learned))
            index.add(keys, ix.quantize(np.stack([v for _, v in learned]), dtype=meta.dtype, i8_scale=meta.i8_scale))
            products = len(np.unique(np.asarray(index.keys)))
        ix.publish(data_dir, index, ix.IndexMeta.from_dict({**meta.to_dict(), "products": products,
                                                            "catalog_version": manifest.catalog_version}))
    for side in data_dir.glob("*.index.json"):
        if side.name.removesuffix(".index.json") not in wanted:
            with contextlib.suppress(FileNotFoundError):
                side.unlink()


def _tables(db: sqlite3.Connection, schema: str) -> dict[str, bool]:
    """Catalog tables of ``schema`` -> True for FTS5 tables (copied by column, their shadow tables skipped)."""
    rows = db.execute(f"SELECT name, sql FROM {schema}.sqlite_master WHERE type = 'table'").fetchall()
    virtual = {n for n, sql in rows if sql and sql.upper().startswith("CREATE VIRTUAL TABLE")}
    fts = {n for n, sql in rows if n in virtual and "USING FTS5(" in sql.upper().replace(" (", "(")}
    shadows = {f"{v}{s}" for v in virtual for s in _FTS_SHADOWS}
    return {n: n in fts for n, _ in rows
            if not n.startswith("sqlite_") and n not in shadows and (n not in virtual or n in fts)}


def _columns(db: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [r[1] for r in db.execute(f"PRAGMA {schema}.table_info({table})")]


def _replace_rows(db: sqlite3.Connection) -> None:
    """The chain's tables of ``main`` refilled from ``snap``; the device's own tables keep their rows (those of
    replaced products go, as the cascade would have taken them) and ``meta`` is never read from the snapshot."""
    mine, theirs = _tables(db, "main"), _tables(db, "snap")
    tables = sorted(t for t in mine if t in theirs and t in CHAIN_TABLES)
    if absent := sorted((CHAIN_TABLES & set(mine)) - set(tables)):
        raise SnapshotError(f"the snapshot lacks the catalog tables {absent}",
                            hint="build the snapshot with the StoreLens version the devices run")
    missing = sorted(t for t in mine if t not in CHAIN_TABLES and t != "meta")  # the device's own tables
    for table in tables:
        if lacking := set(_columns(db, "main", table)) - set(_columns(db, "snap", table)):
            raise SnapshotError(f"the snapshot's {table} table lacks columns {sorted(lacking)}",
                                hint="build the snapshot with the StoreLens version the devices run")
    for table in tables:  # foreign keys are off on this connection: whole tables go without per-row cascades
        db.execute(f"DELETE FROM main.{table}")
    for table in tables:
        names = ", ".join(_columns(db, "main", table))
        rowid = "rowid, " if mine[table] else ""
        db.execute(f"INSERT INTO main.{table}({rowid}{names}) SELECT {rowid}{names} FROM snap.{table}")
    for table in missing:  # device-only rows of replaced products go, as the cascade would have taken them
        for fk in db.execute(f"PRAGMA main.foreign_key_list({table})").fetchall():
            parent, col, pcol, on_delete = fk[2], fk[3], fk[4] or "rowid", fk[6]
            if parent in tables and on_delete.upper() == "CASCADE":
                db.execute(f"DELETE FROM main.{table} WHERE {col} IS NOT NULL AND {col} NOT IN "
                           f"(SELECT {pcol} FROM main.{parent})")
    if bad := db.execute("PRAGMA main.foreign_key_check").fetchmany(3):
        raise SnapshotError(f"the snapshot's rows break the catalog's foreign keys (e.g. {bad})",
                            hint="rebuild the snapshot with `storelens catalog build`")
    if "sqlite_sequence" in {r[0] for r in db.execute("SELECT name FROM snap.sqlite_master")}:
        marks = ", ".join("?" * len(tables))
        db.execute(f"DELETE FROM main.sqlite_sequence WHERE name IN ({marks})", tables)
        db.execute(f"INSERT INTO main.sqlite_sequence(name, seq) SELECT name, seq FROM snap.sqlite_sequence "
                   f"WHERE name IN ({marks})", tables)
