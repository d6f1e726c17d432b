"""SQLite as every StoreLens database uses it: WAL, explicit transactions, shareable between threads.

A connection is in autocommit mode (``isolation_level=None``): nothing is transactional unless
it runs inside :func:`transaction`, which commits on success and rolls back on any exception, a
failed ``COMMIT`` included (a full disk fails at COMMIT), so a caller never keeps state that the
database did not keep.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

Synchronous = Literal["NORMAL", "FULL"]
BUSY_TIMEOUT_S = 5.0  # how long a write waits for another connection's lock before failing
WAL_CHECKPOINT_PAGES = 128  # checkpoint after a commit leaves the WAL this long (SQLite's default: 1000)
WAL_LIMIT_BYTES = 1 << 20  # and cut it back to this after a checkpoint (default: never)
LOW_SPACE_BYTES = 1 << 20  # below this much free space a failed write is put down to a full disk


def connect(path: Path, *, synchronous: Synchronous = "NORMAL", foreign_keys: bool = False,
            timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """Open (creating) a WAL database; ``synchronous=NORMAL`` survives a killed process, ``FULL`` a power cut."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout_s)
    db.execute("PRAGMA journal_mode=WAL")
    # A small WAL: SQLite's default checkpoints at 1000 pages and never shrinks the file, so each
    # database of many small transactions (outbox, baskets) would keep ~4 MiB of a nearly full disk.
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
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
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise


def rollback(db: sqlite3.Connection) -> None:
    """Undo the open transaction, if SQLite has not already done it.

    After a failed statement or a failed ``COMMIT`` (``database or disk is full``, an I/O error)
    SQLite may already have rolled back by itself; a second ``ROLLBACK`` would then raise and hide
    the error that matters, so it is issued only while a transaction is still open.
    """
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # rolled back already: the original error is the one to report


def disk_full(error: BaseException, where: Path) -> bool:
    """True when ``error`` (from SQLite, the OS or a library writing a file under ``where``) means the disk is
    full: ``database or disk is full``, ENOSPC / EDQUOT, or any write error while ``where`` has under
    :data:`LOW_SPACE_BYTES` free (USearch, for one, reports only "Failed to serialize into stream")."""
    if isinstance(error, sqlite3.OperationalError) and "full" in str(error):
        return True
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(where).free < LOW_SPACE_BYTES
    except OSError:
        return False
