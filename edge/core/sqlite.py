"""SQLite as every StoreLens database uses it: WAL, explicit transactions, shareable between threads.

A connection is in autocommit mode (``isolation_level=None``): nothing is transactional unless
it runs inside :func:`transaction`, which commits on success and rolls back on any exception.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

Synchronous = Literal["NORMAL", "FULL"]
BUSY_TIMEOUT_S = 5.0  # how long a write waits for another connection's lock before failing


def connect(path: Path, *, synchronous: Synchronous = "NORMAL", foreign_keys: bool = False,
            timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """Open (creating) a WAL database; ``synchronous=NORMAL`` survives a killed process, ``FULL`` a power cut."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout_s)
    db.execute("PRAGMA journal_mode=WAL")
    if foreign_keys:
        db.execute("PRAGMA foreign_keys=ON")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


@contextmanager
def transaction(db: sqlite3.Connection, *, mode: Literal["IMMEDIATE", "DEFERRED"] = "IMMEDIATE"
                ) -> Iterator[sqlite3.Connection]:
    """One transaction: ``IMMEDIATE`` takes the write lock up front (no upgrade deadlock), ``DEFERRED`` reads."""
    db.execute(f"BEGIN {mode}")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
