"""The on-disk outbox: every outgoing message is written here before it is published.

A row is deleted only when the broker acknowledges it (PUBACK), so a message survives a
broker outage and a killed process; on the next connection the rows are replayed in the
order they were written. The outbox is bounded (count and age from config); what it drops
to stay in bounds is counted in the database itself, so the count survives restarts and is
reported in ``stats`` and ``status``, never dropped silently.

Durability: SQLite in WAL mode. ``synchronous=NORMAL`` ("process", the default) survives a
killed process, which is the failure a store box sees; ``FULL`` ("power") also survives a
power cut, at the cost of an fsync per insert (measured in docs/benchmarks.md).

**A full disk** (``database or disk is full``, or any other write SQLite refuses) never loses
a queued message and never stops delivery. Every change is made in memory first — new
messages, acknowledged or dropped rows, counter increments — and then written in one
transaction; when that transaction fails, the change stays in memory (new messages up to
:data:`MEMORY_MAX_BYTES`, oldest dropped and counted beyond it), :meth:`pending` and
:meth:`stats` serve disk plus memory, and the next write (or :meth:`pending`, at most every
:data:`RETRY_S`) tries again, so the outbox catches up by itself when space returns. Failures
are counted (``write_errors``, ``last_error``, ``in_memory``) for status, health and metrics.
The depth kept in memory moves only after a COMMIT succeeded, so it cannot drift.

**Ages** are measured on the outbox's own clock, not the wall clock: the box's running time
(``time.monotonic``), carried across restarts in the database (counter ``clock_ms``, saved with
every write). A wall-clock step — NTP correcting a box that booted in 2024, a clock set a year
ahead — changes no message's age. Time the box is switched off does not count either: the wall
clock is the only witness of it, and it is the thing that cannot be trusted. Messages keep their
wall-clock ``created`` for information only. Rows of an outbox from before this clock start at
age 0 on the upgrade.

**A damaged file** (not a database, or failing SQLite's quick check) is moved aside as
``outbox.db.damaged-<time>``; the rows still readable from it are copied into a fresh outbox
(logged, and kept in ``last_error``), and the runtime starts instead of failing on every restart.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge.comms.outbox_salvage import salvage
from edge.core.config import MqttSettings
from edge.core.errors import StoreLensError
from edge.core.sqlite import connect, transaction

log = logging.getLogger("storelens.outbox")

Durability = Literal["process", "power"]
_DEFAULTS = MqttSettings()
MEMORY_MAX_BYTES = 16 * 1024 * 1024  # payloads held in memory while the disk refuses writes
RETRY_S = 1.0  # how often pending() retries saving what is held in memory
COUNTERS = ("written", "delivered", "dropped_full", "dropped_age")
_COLUMNS = "seq, msg_id, topic, payload, qos, retain, created, age_base"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL,
    age_base REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('dropped_full', 0), ('dropped_age', 0), ('written', 0), ('delivered', 0),
    ('clock_ms', 0);
"""


class OutboxError(StoreLensError):
    """The outbox database cannot be opened or written."""

    exit_code = 11


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One stored message, in write order (``seq``); ``age_base`` is the outbox clock when it was written."""

    seq: int
    msg_id: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float
    age_base: float = 0.0


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    written: int
    delivered: int
    dropped_full: int
    dropped_age: int
    in_memory: int = 0  # messages the disk refused so far, held in memory until it has room
    write_errors: int = 0  # writes SQLite refused in this run (a full disk, an I/O error)
    last_error: str | None = None
    failing: bool = False  # the last write was refused: something waits in memory to be saved

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "written": self.written, "delivered": self.delivered,
                "dropped_full": self.dropped_full, "dropped_age": self.dropped_age, "in_memory": self.in_memory,
                "write_errors": self.write_errors, "last_error": self.last_error, "failing": self.failing}


class Outbox:
    """A bounded, ordered, durable message queue in one SQLite file (thread-safe)."""

    def __init__(self, *, path: Path, max_messages: int = _DEFAULTS.outbox_max_messages,
                 max_age_s: float = _DEFAULTS.outbox_max_age_s,
                 durability: Durability = _DEFAULTS.outbox_durability,
                 clock: Callable[[], float] = time.monotonic, memory_max_bytes: int = MEMORY_MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self.memory_max_bytes = memory_max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._memory: dict[int, OutboxMessage] = {}  # written, not yet on disk (seq order: insertion order)
        self._memory_bytes = 0
        self._gone: set[int] = set()  # rows on disk acknowledged or dropped, not yet deleted there
        self._unsaved: Counter[str] = Counter()  # counter increments not yet on disk
        self.write_errors = 0
        self.last_error: str | None = None
        self._failing = False
        self._next_retry = 0.0
        self._db = self._open(synchronous="FULL" if durability == "power" else "NORMAL")
        self._clock0 = clock()

    # -- the queue -----------------------------------------------------------------------------------

    def put(self, *, msg_id: str, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
            now: float | None = None) -> int:
        """Store a message (before it is published) and return its sequence number; never raises on a full
        disk (the message is then held in memory, see the module docstring)."""
        created = time.time() if now is None else now
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            self._memory[seq] = OutboxMessage(seq, msg_id, topic, bytes(payload), qos, bool(retain), created,
                                              self.age_clock())
            self._memory_bytes += len(payload)
            self._unsaved["written"] += 1
            self._enforce_bounds()
            self._save()
            return seq

    def pending(self, *, after_seq: int = 0, limit: int = 1000) -> list[OutboxMessage]:
        """Messages with ``seq > after_seq`` in write order (on disk and held in memory)."""
        with self._lock:
            if (self._memory or self._gone or self._unsaved) and self._clock() >= self._next_retry:
                self._save()
            try:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                                        (after_seq, limit + len(self._gone))).fetchall()
            except sqlite3.Error as e:  # an unreadable page: what memory holds is still delivered
                self._failed("read", e)
                rows = []
            disk = [OutboxMessage(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]), r[6], r[7])
                    for r in rows if r[0] not in self._gone]
            held = [m for s, m in self._memory.items() if s > after_seq]
        return (disk + held)[:limit]  # every row on disk is older than every message in memory

    def ack(self, seq: int) -> bool:
        """The broker acknowledged ``seq``: forget it. False when it was already gone (dropped or acked)."""
        with self._lock:
            if (m := self._memory.pop(seq, None)) is not None:
                self._memory_bytes -= len(m.payload)
            elif seq in self._gone or not self._on_disk(seq):
                return False
            else:
                self._gone.add(seq)
            self._unsaved["delivered"] += 1
            self._save()
            return True

    def prune(self) -> int:
        """Drop messages older than ``max_age_s`` on the outbox clock (counted); returns how many."""
        with self._lock:
            cutoff = self.age_clock() - self.max_age_s
            try:
                old = [s for (s,) in self._db.execute("SELECT seq FROM outbox WHERE age_base < ?", (cutoff,))
                       if s not in self._gone]
            except sqlite3.Error as e:
                self._failed("read", e)
                old = []
            self._gone.update(old)
            held = [s for s, m in self._memory.items() if m.age_base < cutoff]
            for s in held:
                self._memory_bytes -= len(self._memory.pop(s).payload)
            n = len(old) + len(held)
            if n:
                self._unsaved["dropped_age"] += n
                self._save()
            return n

    def age_clock(self) -> float:
        """The outbox clock: seconds of the box's running time since the outbox was created (survives restarts,
        ignores wall-clock steps)."""
        return self._age0 + (self._clock() - self._clock0)

    def stats(self) -> OutboxStats:
        with self._lock:
            c = {k: self._counters[k] + self._unsaved[k] for k in COUNTERS}
            depth = self._depth + len(self._memory) - len(self._gone)
            return OutboxStats(depth=depth, written=c["written"], delivered=c["delivered"],
                               dropped_full=c["dropped_full"], dropped_age=c["dropped_age"],
                               in_memory=len(self._memory), write_errors=self.write_errors,
                               last_error=self.last_error, failing=self._failing)

    def close(self) -> None:
        """Save what memory holds (a last try) and close; what still cannot be written is logged as lost."""
        with self._lock:
            if (self._memory or self._gone or self._unsaved) and not self._save():
                if self._memory:
                    log.error("outbox: the disk still refuses writes at shutdown; %d messages held in memory are "
                              "lost", len(self._memory), extra={"lost": len(self._memory), "error": self.last_error})
                if self._gone:
                    log.warning("outbox: %d deliveries could not be recorded (the disk refuses writes); those "
                                "messages are sent again after the restart", len(self._gone))
            self._db.close()

    # -- internals ---------------------------------------------------------------------------------

    def _save(self) -> bool:
        """Write what only memory holds — messages, deletions, counters, the clock — in one transaction.
        In-memory state changes only after the COMMIT succeeded; False (counted) when SQLite refused."""
        msgs, gone = list(self._memory.values()), sorted(self._gone)
        try:
            with transaction(self._db):
                self._db.executemany(f"INSERT INTO outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                     [(m.seq, m.msg_id, m.topic, m.payload, m.qos, int(m.retain), m.created,
                                       m.age_base) for m in msgs])
                deleted = self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in gone]).rowcount
                self._db.executemany("UPDATE counters SET value = value + ? WHERE name = ?",
                                     [(n, k) for k, n in self._unsaved.items() if n])
                self._db.execute("UPDATE counters SET value = MAX(value, ?) WHERE name = 'clock_ms'",
                                 (int(self.age_clock() * 1000),))
        except sqlite3.Error as e:
            self._failed("write", e)
            return False
        self._depth += len(msgs) - max(deleted, 0)
        for k, n in self._unsaved.items():
            self._counters[k] += n
        self._memory.clear()
        self._memory_bytes = 0
        self._gone.clear()
        self._unsaved.clear()
        if self._failing:
            self._failing = False
            log.warning("outbox writes again: what was held in memory is on disk", extra={"messages": len(msgs)})
        return True

    def _failed(self, op: str, e: sqlite3.Error) -> None:
        self.write_errors += op == "write"
        self.last_error = f"{op} failed: {e}"
        self._next_retry = self._clock() + RETRY_S
        if not self._failing:
            self._failing = True
            log.error("outbox cannot %s %s (%s): messages are held in memory and delivered from there; they are "
                      "saved when the disk has room (free space in catalog.data_dir)", op, self.path, e,
                      extra={"in_memory": len(self._memory)})

    def _on_disk(self, seq: int) -> bool:
        try:
            return self._db.execute("SELECT 1 FROM outbox WHERE seq = ?", (seq,)).fetchone() is not None
        except sqlite3.Error as e:
            self._failed("read", e)
            return False

    def _enforce_bounds(self) -> None:
        """Drop the oldest messages (counted) past ``max_messages``, and held ones past ``memory_max_bytes``."""
        excess = self._depth + len(self._memory) - len(self._gone) - self.max_messages
        if excess > 0:
            try:
                oldest = [s for (s,) in self._db.execute("SELECT seq FROM outbox ORDER BY seq LIMIT ?",
                                                         (excess + len(self._gone),)) if s not in self._gone]
            except sqlite3.Error as e:
                self._failed("read", e)
                oldest = []
            self._gone.update(oldest[:excess])
            self._unsaved["dropped_full"] += min(excess, len(oldest))
            excess -= min(excess, len(oldest))
        while self._memory and (excess > 0 or self._memory_bytes > self.memory_max_bytes):
            seq = next(iter(self._memory))
            self._memory_bytes -= len(self._memory.pop(seq).payload)
            self._unsaved["dropped_full"] += 1
            excess -= 1

    # -- opening ------------------------------------------------------------------------------------

    def _open(self, *, synchronous: Literal["NORMAL", "FULL"]) -> sqlite3.Connection:
        """Open (or create) the file; a damaged one is moved aside and what it still holds salvaged."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                db = self._connect(synchronous)
            except sqlite3.DatabaseError as e:
                if isinstance(e, sqlite3.OperationalError) or not self.path.exists():
                    raise
                db = self._replace_damaged(e, synchronous)
            self._counters = Counter(dict(db.execute("SELECT name, value FROM counters").fetchall()))
            self._age0 = self._counters.pop("clock_ms", 0) / 1000
            self._depth = int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            seqs = db.execute("SELECT MAX(seq) FROM outbox UNION ALL SELECT MAX(seq) FROM sqlite_sequence "
                              "WHERE name = 'outbox'").fetchall()
            self._next_seq = max([int(s or 0) for (s,) in seqs] + [0]) + 1
            return db
        except (sqlite3.Error, OSError) as e:
            raise OutboxError(f"cannot open outbox {self.path}: {e}",
                              hint="check that catalog.data_dir is writable and the disk is not full") from e

    def _connect(self, synchronous: Literal["NORMAL", "FULL"]) -> sqlite3.Connection:
        db = connect(self.path, synchronous=synchronous)
        try:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            db.executescript(_SCHEMA)
            columns = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
            if "age_base" not in columns:  # an outbox from before the outbox clock: its rows start at age 0
                db.execute("ALTER TABLE outbox ADD COLUMN age_base REAL NOT NULL DEFAULT 0")
        except BaseException:
            db.close()
            raise
        return db

    def _replace_damaged(self, error: sqlite3.DatabaseError, synchronous: Literal["NORMAL", "FULL"]
                         ) -> sqlite3.Connection:
        aside = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            if (src := Path(f"{self.path}{suffix}")).exists():
                src.rename(f"{aside}{suffix}")
        rows = salvage(aside)
        db = self._connect(synchronous)
        with transaction(db):
            db.executemany("INSERT INTO outbox (seq, msg_id, topic, payload, qos, retain, created) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        self.last_error = (f"outbox was damaged ({error}): moved to {aside.name}; "
                           f"{len(rows)} messages salvaged into a fresh outbox")
        log.error("outbox %s was damaged (%s): moved aside to %s; %d messages salvaged, a fresh outbox is used",
                  self.path, error, aside, len(rows))
        return db
