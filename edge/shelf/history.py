"""The shelf's history on disk: one row per facing state change, one row per alert (SQLite, bounded).

``<catalog.data_dir>/shelf/history.db`` (WAL): ``states`` gets a row each time a facing's
planogram state changes (what the voter published, flickers included: the report weighs them
by time), ``alerts`` one row per alert, updated when it is acknowledged or cleared. Both tables
are bounded by ``max_rows``: writing past the bound deletes the oldest rows, so a shelf box that
runs for years never fills its disk. Thread-safe (one connection behind a lock).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge.core.sqlite import connect, transaction
from edge.shelf.alerts import Alert

_SCHEMA = """
CREATE TABLE IF NOT EXISTS states(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    camera TEXT NOT NULL,
    facing TEXT NOT NULL,
    expected_sku TEXT,
    state TEXT NOT NULL,
    observed_sku TEXT
);
CREATE INDEX IF NOT EXISTS states_ts ON states(ts);
CREATE TABLE IF NOT EXISTS alerts(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    camera TEXT NOT NULL,
    facing TEXT NOT NULL,
    state TEXT NOT NULL,
    expected_sku TEXT,
    observed_sku TEXT,
    since REAL NOT NULL,
    opened REAL NOT NULL,
    acked REAL,
    cleared REAL,
    crop_id TEXT
);
CREATE INDEX IF NOT EXISTS alerts_opened ON alerts(opened);
"""
PRUNE_EVERY = 100  # rows written between two checks of the bound


@dataclass(frozen=True, slots=True)
class StateRow:
    ts: float
    camera: str
    facing: str
    expected_sku: str | None
    state: str
    observed_sku: str | None


class ShelfHistory:
    """The shelf history database (see the module docstring)."""

    def __init__(self, path: Path, *, max_rows: int = 200_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_rows = max_rows
        self._db = connect(path)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._writes = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record_state(self, row: StateRow) -> None:
        """A facing's new state (the caller writes changes only)."""
        with self._lock, transaction(self._db) as db:
            db.execute("INSERT INTO states(ts, camera, facing, expected_sku, state, observed_sku) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (row.ts, row.camera, row.facing, row.expected_sku, row.state, row.observed_sku))
            self._prune(db)

    def record_alert(self, a: Alert) -> None:
        """An alert as it is now: inserted when opened, its ``acked`` / ``cleared`` updated later."""
        with self._lock, transaction(self._db) as db:
            db.execute("INSERT INTO alerts(id, camera, facing, state, expected_sku, observed_sku, since, opened, "
                       "acked, cleared, crop_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO "
                       "UPDATE SET acked = excluded.acked, cleared = excluded.cleared",
                       (a.id, a.camera, a.facing, a.state, a.expected_sku, a.observed_sku, a.since, a.opened,
                        a.acked, a.cleared, a.crop_id))
            self._prune(db)

    def _prune(self, db: sqlite3.Connection) -> None:
        self._writes += 1
        if self._writes % PRUNE_EVERY and self._writes > 1:
            return
        for table in ("states", "alerts"):
            n = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            if n > self.max_rows:
                db.execute(f"DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} ORDER BY seq LIMIT ?)",
                           (n - self.max_rows,))

    def states(self, since: float, until: float) -> Iterator[StateRow]:
        """Every facing's state at ``since`` (its last change before it) and each change up to ``until``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.ts, s.camera, s.facing, s.expected_sku, s.state, s.observed_sku FROM states s "
                "JOIN (SELECT camera, facing, MAX(seq) AS seq FROM states WHERE ts < ? GROUP BY camera, facing) "
                "b ON s.seq = b.seq "
                "UNION ALL SELECT ts, camera, facing, expected_sku, state, observed_sku FROM states "
                "WHERE ts >= ? AND ts <= ? ORDER BY 1", (since, since, until)).fetchall()
        for r in rows:
            yield StateRow(*r)

    def alerts(self, since: float, until: float) -> list[Alert]:
        """Alerts opened in ``[since, until]``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, camera, facing, state, expected_sku, observed_sku, since, opened, crop_id, acked, "
                "cleared FROM alerts WHERE opened >= ? AND opened <= ? ORDER BY opened", (since, until)).fetchall()
        return [Alert(id=r[0], camera=r[1], facing=r[2], state=r[3], expected_sku=r[4], observed_sku=r[5],
                      since=r[6], opened=r[7], crop_id=r[8], acked=r[9], cleared=r[10]) for r in rows]


def history_path(data_dir: Path) -> Path:
    """Where a device keeps its shelf history: ``<catalog.data_dir>/shelf/history.db``."""
    return data_dir / "shelf" / "history.db"
