"""Confirmations kept on the device: a shopper's "it is this product" for one view, with its crop.

Every tap on the kiosk screen that confirms (or corrects) a product is published on MQTT
(``<prefix>/<camera>/confirm``) *and* kept here, so that later work (learning from the store's
own shoppers, issue 18) can read labelled crops without the broker. Layout, under
``<catalog.data_dir>/confirmations/``:

- ``confirmations.db``: SQLite (WAL), one row per confirmation (see :class:`Confirmation`);
- ``crops/<id>.jpg``: the region crop the runtime decided on, when it was still in memory.

The store is bounded (``max_items``): adding past the bound deletes the oldest rows and their
crop files in the same call, so a busy kiosk never fills its disk. Thread-safe (one
connection behind a lock); the reading API (:meth:`ConfirmationStore.recent`,
:meth:`~ConfirmationStore.iter_all`, :meth:`~ConfirmationStore.load_crop`,
:meth:`~ConfirmationStore.delete`) is what a learner uses.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.core.errors import StoreLensError
from edge.core.sqlite import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS confirmations(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    ts REAL NOT NULL,
    match_id TEXT NOT NULL,
    view_id TEXT,
    camera TEXT NOT NULL,
    roi TEXT NOT NULL,
    sku TEXT NOT NULL,
    decision TEXT NOT NULL,
    predicted_sku TEXT,
    source TEXT NOT NULL,
    crop TEXT,
    catalog_version TEXT);
CREATE INDEX IF NOT EXISTS confirmations_by_sku ON confirmations(sku);
"""
_COLS = "id, ts, match_id, view_id, camera, roi, sku, decision, predicted_sku, source, crop, catalog_version"
JPEG_QUALITY = 90


class ConfirmationError(StoreLensError):
    """The confirmations folder cannot be opened or written."""

    exit_code = 11


@dataclass(frozen=True, slots=True, kw_only=True)
class Confirmation:
    """One confirmed view: what the runtime said (``decision``, ``predicted_sku``) and what the shopper said."""

    id: str
    ts: float
    match_id: str
    view_id: str | None
    camera: str
    roi: str
    sku: str  # the confirmed product
    decision: str  # the runtime's decision for that match: known | unknown
    predicted_sku: str | None  # the runtime's top candidate (None when it had none)
    source: str  # candidate | search: where on the screen the product was tapped
    crop: str | None  # file name under crops/, None when no crop was kept
    catalog_version: str | None = None

    @property
    def corrected(self) -> bool:
        """True when the shopper named another product than the runtime's known decision."""
        return self.decision == "known" and self.predicted_sku != self.sku

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class ConfirmationStore:
    """Bounded confirmations with their crops in one folder; see the module docstring."""

    def __init__(self, folder: Path, *, max_items: int = 5000) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.folder = Path(folder)
        self.crops_dir = self.folder / "crops"
        self.max_items = max_items
        self._lock = threading.Lock()
        try:
            self.crops_dir.mkdir(parents=True, exist_ok=True)
            self._db = connect(self.folder / "confirmations.db")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise ConfirmationError(f"cannot open the confirmations store in {self.folder}: {e}",
                                    hint="check that catalog.data_dir is writable and the disk is not full") from e

    def add(self, *, match_id: str, view_id: str | None, camera: str, roi: str, sku: str, decision: str,
            predicted_sku: str | None, source: str, crop: np.ndarray | None = None,
            catalog_version: str | int | None = None, ts: float | None = None) -> Confirmation:
        """Keep one confirmation (and its crop as JPEG); drops the oldest beyond ``max_items``."""
        cid = uuid.uuid4().hex
        crop_name = self._write_crop(cid, crop) if crop is not None and crop.size else None
        c = Confirmation(id=cid, ts=time.time() if ts is None else ts, match_id=match_id, view_id=view_id,
                         camera=camera, roi=roi, sku=sku, decision=decision, predicted_sku=predicted_sku,
                         source=source, crop=crop_name,
                         catalog_version=None if catalog_version is None else str(catalog_version))
        try:
            with self._lock, transaction(self._db):
                self._db.execute(f"INSERT INTO confirmations({_COLS}) VALUES({','.join('?' * 12)})", _row(c))
                dropped = self._enforce_bound()
        except BaseException:
            self._unlink([crop_name])
            raise
        self._unlink(dropped)
        return c

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM confirmations").fetchone()[0])

    def recent(self, limit: int = 50) -> list[Confirmation]:
        """The newest ``limit`` confirmations, newest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLS} FROM confirmations ORDER BY seq DESC LIMIT ?",
                                    (int(limit),)).fetchall()
        return [_confirmation(r) for r in rows]

    def iter_all(self, *, sku: str | None = None, batch: int = 500) -> Iterator[Confirmation]:
        """Every confirmation oldest first (optionally of one sku), read in batches."""
        last = 0
        while True:
            where, params = ("AND sku = ?", (sku,)) if sku is not None else ("", ())
            with self._lock:
                rows = self._db.execute(f"SELECT seq, {_COLS} FROM confirmations WHERE seq > ? {where} "
                                        "ORDER BY seq LIMIT ?", (last, *params, batch)).fetchall()
            if not rows:
                return
            last = int(rows[-1][0])
            yield from (_confirmation(r[1:]) for r in rows)

    def crop_path(self, c: Confirmation) -> Path | None:
        return None if c.crop is None else self.crops_dir / c.crop

    def load_crop(self, c: Confirmation) -> np.ndarray | None:
        """The crop as a BGR array, or None when none was kept (or its file is gone)."""
        path = self.crop_path(c)
        if path is None or not path.is_file():
            return None
        return cv2.imread(str(path), cv2.IMREAD_COLOR)

    def delete(self, ids: Iterable[str]) -> int:
        """Forget confirmations (e.g. once learned from); returns how many were deleted."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0
        marks = ",".join("?" * len(wanted))
        with self._lock:
            crops = [r[0] for r in self._db.execute(f"SELECT crop FROM confirmations WHERE id IN ({marks})", wanted)]
            n = self._db.execute(f"DELETE FROM confirmations WHERE id IN ({marks})", wanted).rowcount
        self._unlink(crops)
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals ---------------------------------------------------------------------------------

    def _write_crop(self, cid: str, crop: np.ndarray) -> str:
        name = f"{cid}.jpg"
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ConfirmationError("a confirmation crop could not be encoded as JPEG")
        tmp = self.crops_dir / f".{name}.tmp"
        tmp.write_bytes(buf.tobytes())
        tmp.replace(self.crops_dir / name)
        return name

    def _enforce_bound(self) -> list[str | None]:
        excess = int(self._db.execute("SELECT COUNT(*) FROM confirmations").fetchone()[0]) - self.max_items
        if excess <= 0:
            return []
        rows = self._db.execute("SELECT seq, crop FROM confirmations ORDER BY seq LIMIT ?", (excess,)).fetchall()
        self._db.execute("DELETE FROM confirmations WHERE seq <= ?", (rows[-1][0],))
        return [r[1] for r in rows]

    def _unlink(self, names: Iterable[str | None]) -> None:
        for name in names:
            if name:
                (self.crops_dir / name).unlink(missing_ok=True)


def _row(c: Confirmation) -> tuple[object, ...]:
    return (c.id, c.ts, c.match_id, c.view_id, c.camera, c.roi, c.sku, c.decision, c.predicted_sku, c.source,
            c.crop, c.catalog_version)


def _confirmation(r: tuple[object, ...] | sqlite3.Row) -> Confirmation:
    return Confirmation(id=str(r[0]), ts=float(r[1]), match_id=str(r[2]),  # type: ignore[arg-type]
                        view_id=None if r[3] is None else str(r[3]), camera=str(r[4]), roi=str(r[5]),
                        sku=str(r[6]), decision=str(r[7]), predicted_sku=None if r[8] is None else str(r[8]),
                        source=str(r[9]), crop=None if r[10] is None else str(r[10]),
                        catalog_version=None if r[11] is None else str(r[11]))
