"""Reading what a damaged outbox file still holds (:class:`edge.comms.outbox.Outbox` moves such a file aside).

Two things make a damaged SQLite file give back more: a file cut short is read from a copy whose
header claims only the pages it still has (SQLite in WAL mode refuses every read of a file shorter
than its header says, even of intact pages), and past a damaged page each ``seq`` is looked up on
its own through the table's index, so only the rows on damaged or missing pages are lost.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

MAX_PROBE = 1_000_000  # seqs looked up one by one at most (about a second): the newest ones


def salvage(path: Path, *, max_probe: int = MAX_PROBE) -> list[tuple[Any, ...]]:
    """The outbox rows still readable from a damaged file, in order (read from a copy whose header is
    fitted to the file's length, see :func:`_header_fitted`).

    A scan in ``seq`` order first; if it stops at a damaged page, each later ``seq`` (up to the
    highest one the file names, at most ``max_probe`` of them) is looked up on its own through the
    table's index, so only the rows on damaged or missing pages are lost.
    """
    copy = path.with_name(path.name + ".salvage")
    try:
        copy.write_bytes(_header_fitted(path.read_bytes()))
        db = sqlite3.connect(copy)
    except (OSError, sqlite3.Error):
        copy.unlink(missing_ok=True)
        return []
    try:
        return _salvage_rows(db, max_probe)
    finally:
        db.close()
        copy.unlink(missing_ok=True)


def _header_fitted(raw: bytes) -> bytes:
    """A cut database with its header's page count set to the pages it still has: SQLite (in WAL mode)
    refuses every read of a file shorter than its header says, even of the pages that are intact."""
    if len(raw) < 100 or not raw.startswith(b"SQLite format 3\0"):
        return raw
    page_size = int.from_bytes(raw[16:18], "big") or 65536  # 1 means 65536
    page_size = 65536 if page_size == 1 else page_size
    if len(raw) % page_size:
        return raw
    return raw[:28] + (len(raw) // page_size).to_bytes(4, "big") + raw[32:]


def _salvage_rows(db: sqlite3.Connection, max_probe: int) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    select = "SELECT seq, msg_id, topic, payload, qos, retain, created FROM outbox"
    try:
        for r in db.execute(f"{select} ORDER BY seq"):
            rows.append(tuple(r))
        return rows
    except sqlite3.Error:
        pass  # a damaged page: look the rest up one by one
    try:
        last = max(int(s or 0) for (s,) in db.execute("SELECT MAX(seq) FROM sqlite_sequence WHERE name = 'outbox'"))
    except (sqlite3.Error, ValueError):
        last = 0
    start = rows[-1][0] + 1 if rows else 1
    for seq in range(max(start, last - max_probe + 1), last + 1):
        try:
            if (r := db.execute(f"{select} WHERE seq = ?", (seq,)).fetchone()) is not None:
                rows.append(tuple(r))
        except sqlite3.Error:
            continue
    return rows
