"""Learned photos across a catalog snapshot install: taken out before the rows are replaced, put back after.

A chain's snapshot (:mod:`edge.catalog.install`) replaces the products, images and vectors rows;
what the shop floor taught this device (:mod:`edge.catalog.learning`) is the device's own. The
install takes every learned photo out with its vector (:func:`take_learned`), refills the rows,
and puts back those whose product is still there (:func:`restore_learned`) inside the same
transaction, adding their vectors to the snapshot's image index before it is swapped in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.catalog.learning import IMAGE, SCHEMA


@dataclass(frozen=True, kw_only=True)
class CarriedPhoto:
    """A learned photo taken out of the catalog before a snapshot replaces its rows, with its vector."""

    sku: str
    path: str
    source: str
    ref: str | None
    learned_ts: float
    cosine: float
    fingerprint: str
    vector: bytes  # float32, as stored in ``vectors.data``


def take_learned(db: sqlite3.Connection) -> list[CarriedPhoto]:
    """Every learned photo of the catalog on ``db`` (schema ``main``), oldest first; none when it never learned.

    A catalog snapshot replaces the products, images and vectors rows (:mod:`edge.catalog.install`);
    what the shop floor taught this device is the device's own, so the install takes it out first
    and puts it back with :func:`restore_learned`.
    """
    if not db.execute("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'learned_images'").fetchone():
        return []
    rows = db.execute(
        "SELECT p.sku, l.path, l.source, l.ref, l.learned_ts, l.cosine, v.fingerprint, v.data "
        "FROM main.learned_images l JOIN main.images i ON i.id = l.image_id AND i.key = l.key AND i.path = l.path "
        "JOIN main.products p ON p.key = l.key JOIN main.vectors v ON v.image_id = l.image_id AND v.modality = ? "
        "ORDER BY l.learned_ts, l.image_id", (IMAGE,)).fetchall()
    return [CarriedPhoto(sku=str(r[0]), path=str(r[1]), source=str(r[2]), ref=None if r[3] is None else str(r[3]),
                         learned_ts=float(r[4]), cosine=float(r[5]), fingerprint=str(r[6]), vector=bytes(r[7]))
            for r in rows]


def restore_learned(db: sqlite3.Connection, photos: Sequence[CarriedPhoto], *,
                    fingerprint: str | None) -> tuple[list[tuple[int, np.ndarray]], list[str]]:
    """Put carried learned photos back into the refilled catalog on ``db``: ``(added (key, vector), dropped paths)``.

    A photo comes back when its product is still in the catalog, its vector is of the catalog's
    image encoder (``fingerprint``) and its file is still on disk (the bound per product held when
    it was learned); the rest are dropped: the caller deletes their files after the commit. The
    learning counts and the review queue are device rows a snapshot never replaces; a snapshot's own
    learned rows (which would name files the device later deletes) are never imported.
    """
    for stmt in SCHEMA.split(";"):
        if stmt.strip():
            db.execute(stmt)
    db.execute("DELETE FROM main.learned_images")  # what stays is exactly what was carried: never a snapshot's row
    keys = {str(s): int(k) for s, k in db.execute("SELECT sku, key FROM main.products")}
    added: list[tuple[int, np.ndarray]] = []
    dropped: list[str] = []
    for p in photos:
        key = keys.get(p.sku)
        if key is None or p.fingerprint != fingerprint or not Path(p.path).is_file():
            dropped.append(p.path)
        else:
            image_id = int(db.execute("INSERT INTO main.images(key, path) VALUES(?, ?)", (key, p.path)).lastrowid or 0)
            db.execute("INSERT INTO main.vectors(key, modality, fingerprint, image_id, data) VALUES(?, ?, ?, ?, ?)",
                       (key, IMAGE, p.fingerprint, image_id, p.vector))
            db.execute("INSERT INTO main.learned_images(image_id, key, path, source, ref, learned_ts, cosine) "
                       "VALUES(?, ?, ?, ?, ?, ?, ?)", (image_id, key, p.path, p.source, p.ref, p.learned_ts, p.cosine))
            added.append((key, np.frombuffer(p.vector, dtype=np.float32)))
    return added, dropped
