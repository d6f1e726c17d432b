"""Sold baskets in, decayed co-occurrence statistics out (SQLite, WAL).

Store systems publish each sold basket on ``<prefix>/events/basket`` as JSON
``{"id": "...", "skus": ["a", "b"], "ts": 1732450000.0}`` (``ts`` optional: epoch seconds or
ISO 8601; missing = arrival time). :class:`BasketStore` keeps, incrementally and durably:

- per product the (decayed) number of baskets it was in, and the total basket weight;
- per ordered pair of products the (decayed) number of baskets that held both;
- the ids seen in the last ``dedup_window`` so a replayed basket is counted once.

Time decay without rewriting every row on every basket: a basket sold at ``ts`` adds
``2 ** ((ts - t_ref) / half_life)`` to its rows, and a reader multiplies everything by
``2 ** (-(now - t_ref) / half_life)``. So each basket weighs ``2 ** (-(now - ts) / half_life)``
when read, out-of-order arrivals are exact, and the rows are only rescaled ("rebased") when the
stored exponent grows large. The pair counts are exactly the Gram matrix ``X^T X`` of the
(decayed) basket-item matrix, which is all that the association models in
:mod:`edge.recommend` need.

Bad input never raises out of :meth:`BasketStore.handle_message` (parsing and checks:
:mod:`edge.recommend.basket_events`): malformed, empty, oversized,
stale, future-dated and duplicate baskets are rejected, counted (persistently) and logged.

Forged baskets (issue 28): when ``mqtt.command_token`` is set a basket must carry it as
``"token"`` (compared in constant time), else it is rejected ``unauthorised``; skus the catalog
does not hold are dropped (a basket left with none is rejected ``unknown_sku``), so a forged
basket cannot invent rows; and at most ``recommend.max_baskets_per_minute`` baskets are counted
a minute (the rest rejected ``rate``). ``unauthorised`` and ``rate`` are counted in memory only,
so a flood never writes to the database.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

import numpy as np

from edge.core.errors import ConfigError
from edge.core.sqlite import BUSY_TIMEOUT_S, connect, transaction
from edge.recommend.basket_events import Basket, BasketRejected, parse_basket

log = logging.getLogger("storelens.baskets")

REJECT_REASONS = ("malformed", "empty", "too_many_items", "stale", "future", "duplicate", "storage",
                  "unauthorised", "unknown_sku", "rate")
MEMORY_REASONS = ("storage", "unauthorised", "rate")  # counted in memory: writing them is what they must not cause
FUTURE_SKEW_S = 300.0  # clocks of store systems may be this far ahead of ours
_REBASE_EXPONENT = 64.0  # rescale stored weights once a new basket would weigh 2**64 times t_ref
PRUNE_EVERY = 1000  # accepted baskets between prunes of expired ids


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What became of one basket event: accepted, or rejected with a reason (never silent)."""

    accepted: bool
    reason: str | None = None
    basket_id: str | None = None
    items: int = 0
    message: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"accepted": self.accepted, "reason": self.reason, "id": self.basket_id, "items": self.items,
                "message": self.message}


@dataclass(frozen=True, slots=True)
class Cooccurrence:
    """Decayed basket statistics at one moment, as arrays (the Gram matrix in sparse form).

    ``item_weight[i]``: baskets holding ``skus[i]``; ``pair_i/pair_j/pair_weight``: baskets
    holding both, each unordered pair listed in both directions; ``total``: all baskets.
    """

    skus: tuple[str, ...]
    item_weight: np.ndarray
    pair_i: np.ndarray
    pair_j: np.ndarray
    pair_weight: np.ndarray
    total: float
    version: int

    @property
    def n_items(self) -> int:
        return len(self.skus)

    def dense(self) -> np.ndarray:
        """The (n, n) Gram matrix: pair counts off the diagonal, item counts on it (float64)."""
        g = np.zeros((self.n_items, self.n_items), dtype=np.float64)
        g[self.pair_i, self.pair_j] = self.pair_weight
        g[np.arange(self.n_items), np.arange(self.n_items)] = self.item_weight
        return g

    @classmethod
    def from_baskets(cls, baskets: Iterable[Iterable[str]], *, weights: Iterable[float] | None = None,
                     version: int = 0) -> Cooccurrence:
        """Count in memory (for evaluation and tests); same numbers as a :class:`BasketStore` would give."""
        items: dict[str, float] = {}
        pairs: dict[tuple[str, str], float] = {}
        total = 0.0
        ws = iter(weights) if weights is not None else None
        for basket in baskets:
            w = float(next(ws)) if ws is not None else 1.0
            skus = list(dict.fromkeys(basket))
            total += w
            for s in skus:
                items[s] = items.get(s, 0.0) + w
            for a, b in permutations(skus, 2):
                pairs[(a, b)] = pairs.get((a, b), 0.0) + w
        return cls._from_rows(list(items.items()), [(a, b, w) for (a, b), w in pairs.items()], total, version)

    @classmethod
    def _from_rows(cls, items: list[tuple[str, float]], pairs: list[tuple[str, str, float]], total: float,
                   version: int, scale: float = 1.0) -> Cooccurrence:
        items = sorted(items)
        skus = tuple(s for s, _ in items)
        index = {s: i for i, s in enumerate(skus)}
        return cls(
            skus=skus,
            item_weight=np.array([w for _, w in items], dtype=np.float64) * scale,
            pair_i=np.array([index[a] for a, _, _ in pairs], dtype=np.int64),
            pair_j=np.array([index[b] for _, b, _ in pairs], dtype=np.int64),
            pair_weight=np.array([w for _, _, w in pairs], dtype=np.float64) * scale,
            total=total * scale,
            version=version,
        )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen(id TEXT PRIMARY KEY, ts REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_ts ON seen(ts);
CREATE TABLE IF NOT EXISTS items(sku TEXT PRIMARY KEY, w REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pairs(a TEXT NOT NULL, b TEXT NOT NULL, w REAL NOT NULL, PRIMARY KEY(a, b)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""


class BasketStore:
    """Durable, incremental, time-decayed basket statistics in one SQLite file (thread-safe)."""

    def __init__(self, *, path: Path, half_life_s: float | None, dedup_window_s: float, max_items: int,
                 clock: Callable[[], float] = time.time, busy_timeout_s: float = BUSY_TIMEOUT_S,
                 max_per_minute: int | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.max_per_minute = max_per_minute
        self._monotonic = monotonic
        self._recent: deque[float] = deque()  # monotonic times of baskets counted in the last minute
        self.half_life_s = half_life_s
        self.dedup_window_s = dedup_window_s
        self.max_items = max_items
        self._clock = clock
        self._lock = threading.RLock()  # re-entered by _reject inside add()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = connect(self.path, timeout_s=busy_timeout_s)
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"basket database {self.path} cannot be opened: {e}",
                              hint="delete the file to start counting afresh, or fix its permissions") from e
        self._check_half_life()
        self._accepted_since_prune = 0
        self._version = int(self._meta("version") or 0)
        self._memory_counts = dict.fromkeys(MEMORY_REASONS, 0)  # never written: see MEMORY_REASONS

    def _check_half_life(self) -> None:
        want = "none" if self.half_life_s is None else repr(float(self.half_life_s))
        row = self._db.execute("SELECT value FROM meta WHERE key='half_life_s'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES('half_life_s', ?)", (want,))
        elif row[0] != want:
            raise ConfigError(f"{self.path} was counted with half-life {row[0]} s, config says {want} s",
                              hint="set recommend.half_life_days back, or delete the file to recount from new baskets")

    def _meta(self, key: str) -> float | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else float(row[0])

    def _set_meta(self, key: str, value: float) -> None:
        self._db.execute("INSERT INTO meta VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                         (key, repr(float(value))))

    def _bump(self, name: str) -> None:
        self._db.execute("INSERT INTO counters VALUES(?, 1) ON CONFLICT(name) DO UPDATE SET n = n + 1", (name,))

    # -- writing ---------------------------------------------------------------------------
    def handle_message(self, payload: bytes | str, *, token: str | None = None,
                       known: Callable[[str], bool] | None = None) -> IngestResult:
        """Parse and count one basket event; every rejection is counted and logged, never raised.

        ``token`` and ``known``: see :func:`parse_basket`; the rate bound is ``max_per_minute``.
        """
        try:
            basket = parse_basket(payload, now=self._clock(), max_items=self.max_items, token=token, known=known)
        except BasketRejected as e:
            return self._reject(e.reason, None, str(e))
        if not self._within_rate():
            return self._reject("rate", basket.id, f"more than {self.max_per_minute} baskets in a minute")
        try:
            return self.add(basket)
        except sqlite3.Error as e:  # disk full, file locked or corrupt: said and counted, the runtime goes on
            self._memory_counts["storage"] += 1
            log.error("basket not stored: %s (check free disk space and %s)", e, self.path,
                      extra={"basket": basket.id})
            return IngestResult(accepted=False, reason="storage", basket_id=basket.id, message=str(e))

    def add(self, basket: Basket) -> IngestResult:
        """Count one basket once (by id); stale, future-dated and duplicate baskets are rejected."""
        now = self._clock()
        if basket.ts < now - self.dedup_window_s:
            return self._reject("stale", basket.id, f"basket {basket.id} is older than the de-duplication window")
        if basket.ts > now + FUTURE_SKEW_S:
            return self._reject("future", basket.id, f"basket {basket.id} is dated {basket.ts - now:.0f} s ahead")
        with self._lock:
            with transaction(self._db) as db:  # one transaction: the id, the counts and the version, or nothing
                fresh = db.execute("INSERT OR IGNORE INTO seen VALUES(?, ?)", (basket.id, basket.ts)).rowcount > 0
                if fresh:
                    self._count(basket, now)
            if not fresh:
                return self._reject("duplicate", basket.id, f"basket {basket.id} was already counted")
            self._version += 1  # after the commit, under the lock: a snapshot and the version agree
        return IngestResult(accepted=True, basket_id=basket.id, items=len(basket.skus))

    def _count(self, basket: Basket, now: float) -> None:
        """Add one basket's (decayed) weight to its items and pairs, inside the caller's transaction."""
        w = self._weight(basket.ts)
        self._db.executemany("INSERT INTO items VALUES(?, ?) ON CONFLICT(sku) DO UPDATE SET w = w + excluded.w",
                             [(s, w) for s in basket.skus])
        self._db.executemany("INSERT INTO pairs VALUES(?, ?, ?) ON CONFLICT(a, b) DO UPDATE SET w = w + "
                             "excluded.w", [(a, b, w) for a, b in permutations(basket.skus, 2)])
        self._set_meta("total", (self._meta("total") or 0.0) + w)
        self._set_meta("version", self._version + 1)
        self._bump("accepted")
        self._accepted_since_prune += 1
        if self._accepted_since_prune >= PRUNE_EVERY:
            self._prune_seen(now)

    def _within_rate(self) -> bool:
        """Room for one more basket in the sliding minute (and take it)."""
        if self.max_per_minute is None:
            return True
        now = self._monotonic()
        with self._lock:
            while self._recent and now - self._recent[0] >= 60.0:
                self._recent.popleft()
            if len(self._recent) >= self.max_per_minute:
                return False
            self._recent.append(now)
            return True

    def _reject(self, reason: str, basket_id: str | None, message: str) -> IngestResult:
        if reason in MEMORY_REASONS:
            with self._lock:
                self._memory_counts[reason] += 1
                first = self._memory_counts[reason] == 1
            if first or self._memory_counts[reason] % 1000 == 0:  # a flood is logged, not echoed line by line
                log.warning("basket rejected", extra={"reason": reason, "basket": basket_id, "detail": message,
                                                      "count": self._memory_counts[reason]})
            return IngestResult(accepted=False, reason=reason, basket_id=basket_id, message=message)
        with self._lock, transaction(self._db):
            self._bump(reason)
        # replays are routine (POS re-sends after an outage): counted, logged quietly
        level = logging.DEBUG if reason == "duplicate" else logging.WARNING
        log.log(level, "basket rejected", extra={"reason": reason, "basket": basket_id, "detail": message})
        return IngestResult(accepted=False, reason=reason, basket_id=basket_id, message=message)

    def _weight(self, ts: float) -> float:
        """Stored weight of a basket sold at ``ts`` (see the module docstring); rebases when needed."""
        if self.half_life_s is None:
            return 1.0
        t_ref = self._meta("t_ref")
        if t_ref is None:
            self._set_meta("t_ref", ts)
            return 1.0
        exponent = (ts - t_ref) / self.half_life_s
        if exponent > _REBASE_EXPONENT:
            self._rebase(ts, t_ref)
            exponent = 0.0
        return float(2.0 ** exponent)

    def _rebase(self, new_ref: float, old_ref: float) -> None:
        factor = 2.0 ** (-(new_ref - old_ref) / self.half_life_s) if self.half_life_s else 1.0
        for table in ("items", "pairs"):
            self._db.execute(f"UPDATE {table} SET w = w * ?", (factor,))
            self._db.execute(f"DELETE FROM {table} WHERE w < 1e-12")
        self._set_meta("total", (self._meta("total") or 0.0) * factor)
        self._set_meta("t_ref", new_ref)

    def _prune_seen(self, now: float) -> None:
        self._db.execute("DELETE FROM seen WHERE ts < ?", (now - self.dedup_window_s,))
        self._accepted_since_prune = 0

    # -- reading ---------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Accepted baskets so far: changes exactly when the statistics change.

        Kept in memory (a read on every recommendation must not touch SQLite), so one process
        writes a file: the runtime. Other processes (the CLI) read a snapshot as of their start.
        """
        return self._version

    def counters(self) -> dict[str, int]:
        """Accepted and rejected (by reason) basket events since the file was created."""
        with self._lock:
            rows = dict(self._db.execute("SELECT name, n FROM counters").fetchall())
        rows.update(self._memory_counts)
        return {name: int(rows.get(name, 0)) for name in ("accepted", *REJECT_REASONS)}

    def snapshot(self, now: float | None = None) -> Cooccurrence:
        """The decayed statistics as of ``now`` (default: the clock), read in one transaction."""
        with self._lock, transaction(self._db, mode="DEFERRED"):
            items = self._db.execute("SELECT sku, w FROM items").fetchall()
            pairs = self._db.execute("SELECT a, b, w FROM pairs").fetchall()
            total = self._meta("total") or 0.0
            version = int(self._meta("version") or 0)
            t_ref = self._meta("t_ref")
        scale = 1.0
        if self.half_life_s is not None and t_ref is not None:
            scale = 2.0 ** (-((self._clock() if now is None else now) - t_ref) / self.half_life_s)
        return Cooccurrence._from_rows(items, pairs, total, version, scale)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> BasketStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
