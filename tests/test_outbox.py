"""The SQLite outbox: order, ack, bounds with counted drops, survival across reopen."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edge.comms.outbox import Outbox, OutboxError


def _put(ob: Outbox, n: int, *, start: int = 0, now: float | None = None) -> list[int]:
    return [ob.put(msg_id=f"m{i}", topic="t/match", payload=f"p{i}".encode(), now=now) for i in range(start, start + n)]


def test_pending_in_write_order_and_ack_removes(tmp_path: Path) -> None:
    ob = Outbox(path=tmp_path / "o.db")
    seqs = _put(ob, 5)
    assert [m.msg_id for m in ob.pending()] == ["m0", "m1", "m2", "m3", "m4"]
    assert [m.msg_id for m in ob.pending(after_seq=seqs[2])] == ["m3", "m4"]
    assert ob.ack(seqs[1]) is True
    assert ob.ack(seqs[1]) is False  # already gone
    assert [m.msg_id for m in ob.pending()] == ["m0", "m2", "m3", "m4"]
    assert ob.stats().to_dict() == {"depth": 4, "written": 5, "delivered": 1, "dropped_full": 0, "dropped_age": 0,
                                    "in_memory": 0, "write_errors": 0, "last_error": None, "failing": False}


def test_survives_reopen_with_counters(tmp_path: Path) -> None:
    ob = Outbox(path=tmp_path / "o.db", max_messages=3)
    _put(ob, 5)
    ob.close()
    again = Outbox(path=tmp_path / "o.db", max_messages=3)
    assert [m.payload for m in again.pending()] == [b"p2", b"p3", b"p4"]
    assert again.stats().dropped_full == 2
    assert again.stats().depth == 3


def test_count_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    ob = Outbox(path=tmp_path / "o.db", max_messages=10)
    _put(ob, 25)
    s = ob.stats()
    assert (s.depth, s.dropped_full, s.written) == (10, 15, 25)
    assert ob.pending()[0].msg_id == "m15"


class Clock:
    """A monotonic clock the test moves by hand (the outbox's running-time clock)."""

    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


def test_age_bound_drops_old_and_counts(tmp_path: Path) -> None:
    clock = Clock()
    ob = Outbox(path=tmp_path / "o.db", max_age_s=60, durability="power", clock=clock)
    _put(ob, 3)
    clock.t += 100
    _put(ob, 2, start=3)
    clock.t += 20
    assert ob.prune() == 3
    assert [m.msg_id for m in ob.pending()] == ["m3", "m4"]
    assert ob.stats().dropped_age == 3


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutboxError, match="cannot open outbox"):
        Outbox(path=blocker / "sub" / "o.db")


def test_a_wall_clock_step_drops_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 14: ages came from the wall clock, so a clock corrected from 2024 dropped every queued message."""
    real = time.time
    year = 365 * 86400.0
    monkeypatch.setattr(time, "time", lambda: real() - 2 * year)  # the box booted with a 2024 clock
    ob = Outbox(path=tmp_path / "o.db", max_age_s=3600)
    _put(ob, 100)
    monkeypatch.setattr(time, "time", real)  # NTP corrects it
    assert ob.prune() == 0
    monkeypatch.setattr(time, "time", lambda: real() + year)  # a clock set a year ahead
    assert ob.prune() == 0
    monkeypatch.setattr(time, "time", lambda: real() - year)  # ... and a year back
    _put(ob, 1, start=100)
    assert ob.prune() == 0
    assert ob.stats().depth == 101 and ob.stats().dropped_age == 0


def test_ages_carry_over_a_restart_on_running_time(tmp_path: Path) -> None:
    """The outbox clock is the box's running time, saved with every write: a restart neither resets ages
    nor counts the time the box was off (the wall clock, its only witness, cannot be trusted)."""
    clock = Clock()
    ob = Outbox(path=tmp_path / "o.db", max_age_s=150, clock=clock)
    _put(ob, 2)
    clock.t += 100  # 100 s of running time...
    _put(ob, 1, start=2)  # ...saved with this write
    ob.close()
    again_clock = Clock()
    again_clock.t = 7.0  # a new boot: the monotonic clock starts over
    again = Outbox(path=tmp_path / "o.db", max_age_s=150, clock=again_clock)
    again_clock.t += 40
    assert again.prune() == 0  # ages 140 and 40
    again_clock.t += 20
    assert again.prune() == 2  # ages 160 and 60: the first two go
    assert [m.msg_id for m in again.pending()] == ["m2"]


def test_a_damaged_outbox_is_moved_aside_and_salvaged(tmp_path: Path) -> None:
    ob = Outbox(path=tmp_path / "o.db")
    _put(ob, 3)
    ob.close()
    with (tmp_path / "o.db").open("r+b") as f:  # an unreadable header: "file is not a database"
        f.write(b"garbage!" * 4)
    again = Outbox(path=tmp_path / "o.db")
    assert "damaged" in str(again.stats().last_error)
    assert len(list(tmp_path.glob("o.db.damaged-*"))) == 1
    _put(again, 1, start=3)
    assert [m.msg_id for m in again.pending()] == ["m3"]


def test_salvage_skips_only_the_damaged_pages(tmp_path: Path) -> None:
    ob = Outbox(path=tmp_path / "o.db")
    for i in range(400):
        ob.put(msg_id=f"m{i}", topic="t", payload=bytes([i % 256]) * 200)
    ob.close()
    size = (tmp_path / "o.db").stat().st_size
    with (tmp_path / "o.db").open("r+b") as f:  # one page in the middle turned to garbage
        f.seek(size // 2 // 4096 * 4096)
        f.write(b"\xff" * 4096)
    again = Outbox(path=tmp_path / "o.db")
    kept = [m.msg_id for m in again.pending(limit=1000)]
    assert 300 < len(kept) < 400 and kept[-1] == "m399"  # a page's rows lost, the rest in order
    assert kept == sorted(kept, key=lambda x: int(x[1:]))


def test_salvage_reads_what_a_cut_file_still_holds(tmp_path: Path) -> None:
    ob = Outbox(path=tmp_path / "o.db")
    for i in range(45):
        ob.put(msg_id=f"m{i}", topic="t", payload=b"p" * 700)
    ob.close()
    path = tmp_path / "o.db"
    os.truncate(path, path.stat().st_size // 2 // 4096 * 4096)  # cut at a page boundary near the middle
    again = Outbox(path=path)
    kept = [m.msg_id for m in again.pending()]
    assert kept and kept == [f"m{i}" for i in range(len(kept))]  # the rows on the pages left, from the oldest
