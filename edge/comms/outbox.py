"""The on-disk outbox: every outgoing message is written here before it is published.

A row is deleted only when the broker acknowledges it (PUBACK), so a message survives a
broker outage and a killed process; on the next connection the rows are replayed in the
order they were written. The outbox is bounded (count and age from config); what it drops
to stay in bounds is counted in the database itself, so the count survives restarts and is
reported in ``stats`` and ``status``, never dropped silently.

Durability: SQLite in WAL mode. ``synchronous=NORMAL`` ("process", the default) survives a
killed process, which is the failure a store box sees; ``FULL`` ("power") also survives a
power cut, at the cost of an fsync per insert (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge.core.config import MqttSettings
from edge.core.errors import StoreLensError
from edge.core.sqlite import connect, transaction

Durability = Literal["process", "power"]
_DEFAULTS = MqttSettings()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('dropped_full', 0), ('dropped_age', 0), ('written', 0), ('delivered', 0);
"""


class OutboxError(StoreLensError):
    """The outbox database cannot be opened or written."""

    exit_code = 11


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One stored message, in write order (``seq``)."""

    seq: int
    msg_id: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    written: int
    delivered: int
    dropped_full: int
    dropped_age: int

    def to_dict(self) -> dict[str, int]:
        return {"depth": self.depth, "written": self.written, "delivered": self.delivered,
                "dropped_full": self.dropped_full, "dropped_age": self.dropped_age}


class Outbox:
    """A bounded, ordered, durable message queue in one SQLite file (thread-safe)."""

    def __init__(self, *, path: Path, max_messages: int = _DEFAULTS.outbox_max_messages,
                 max_age_s: float = _DEFAULTS.outbox_max_age_s,
                 durability: Durability = _DEFAULTS.outbox_durability) -> None:
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = connect(self.path, synchronous="FULL" if durability == "power" else "NORMAL")
            self._db.executescript(_SCHEMA)
            # Kept in memory so the bound check on every insert is O(1), not a table scan.
            self._depth = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except (sqlite3.Error, OSError) as e:
            raise OutboxError(f"cannot open outbox {self.path}: {e}",
                              hint="check that catalog.data_dir is writable and the disk is not full") from e

    def put(self, *, msg_id: str, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
            now: float | None = None) -> int:
        """Store a message (before it is published) and return its sequence number."""
        created = time.time() if now is None else now
        with self._lock, transaction(self._db):
            cur = self._db.execute(
                "INSERT INTO outbox (msg_id, topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?, ?)",
                (msg_id, topic, payload, qos, int(retain), created))
            self._bump("written", 1)
            self._depth += 1
            self._enforce_count()
            return int(cur.lastrowid or 0)

    def pending(self, *, after_seq: int = 0, limit: int = 1000) -> list[OutboxMessage]:
        """Messages with ``seq > after_seq`` in write order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, msg_id, topic, payload, qos, retain, created FROM outbox WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        return [OutboxMessage(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]), r[6]) for r in rows]

    def ack(self, seq: int) -> bool:
        """The broker acknowledged ``seq``: forget it. False when it was already gone (dropped or acked)."""
        with self._lock, transaction(self._db):
            n = self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount
            if n:
                self._bump("delivered", n)
                self._depth -= n
            return n > 0

    def prune(self, now: float | None = None) -> int:
        """Drop messages older than ``max_age_s`` (counted); returns how many were dropped."""
        cutoff = (time.time() if now is None else now) - self.max_age_s
        with self._lock, transaction(self._db):
            n = self._db.execute("DELETE FROM outbox WHERE created < ?", (cutoff,)).rowcount
            if n:
                self._bump("dropped_age", n)
                self._depth -= n
            return n

    def stats(self) -> OutboxStats:
        with self._lock:
            depth = self._depth
            c = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return OutboxStats(depth=depth, written=c["written"], delivered=c["delivered"],
                           dropped_full=c["dropped_full"], dropped_age=c["dropped_age"])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals ---------------------------------------------------------------------------------

    def _bump(self, name: str, n: int) -> None:
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (n, name))

    def _enforce_count(self) -> None:
        excess = self._depth - self.max_messages
        if excess > 0:
            n = self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                                 (excess,)).rowcount
            self._bump("dropped_full", n)
            self._depth -= n
