"""Learning from the shop floor: a confirmed crop becomes a reference photo of the confirmed product.

A confirmation (a kiosk tap, ``cmd/confirm``, a point-of-sale scan: :mod:`edge.pipeline.confirm`)
names a product for a crop the runtime saw. :meth:`Learner.learn` embeds the crop and compares it
with every photo the product already has (enrolled and learned):

- best cosine below the *hold* threshold: the crop is far from everything this product looks
  like, so the confirmation is more likely wrong than the crop is new: it is **held** for review
  (JPEG + row under ``<data_dir>/review/``, bounded) and counted, never enrolled; the threshold is
  ``learning.hold_below``, else the calibration's ``learn_floor`` (``storelens calibrate``), else
  ``learning.uncalibrated_hold_below``; when none of them is set (the default without a
  calibration), **every** confirmation is held (``reason: uncalibrated``, said in ``stats()``):
  without a measured threshold a handful of wrong taps would teach the catalog (issue 28);
- the product already learned ``learning.max_learned_per_hour`` photos in the last hour:
  **limited** (refused before the crop is even embedded; nothing stored);
- best cosine at or above ``learning.duplicate_cosine``: a near-duplicate adds nothing, **skipped**;
- otherwise **learned**: saved as JPEG beside the enrolled photos and added through
  :meth:`~edge.catalog.writer.CatalogWriter.change_photos` (writer lock, one transaction, catalog
  version bump, the image index swapped atomically), tagged in ``learned_images`` with its source,
  reference (match, view or confirmation id) and time. A product keeps at most
  ``learning.max_per_product`` learned photos: the oldest leave first; enrolled catalog photos
  never leave (only rows of ``learned_images`` are ever evicted).

:meth:`Learner.forget` (``storelens catalog forget-learned [--sku] [--since]``) removes learned
photos the same way, so the catalog searches as before they were learned. A catalog snapshot
install keeps them (:mod:`edge.catalog.learned_carry`). Counts (learned,
skipped, held, evicted, forgotten) persist in ``learning_counts``.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from edge.core.errors import CatalogError, ImageError, InputError
from edge.core.learning_settings import LearningSettings
from edge.core.sqlite import connect, transaction

if TYPE_CHECKING:
    from edge.catalog.store import Store

log = logging.getLogger("storelens.learning")

IMAGE = "image"
HOLD_QUANTILE = 0.02  # learn_floor: 98% of labelled photos reach this cosine to their own product's photos
JPEG_QUALITY = 95
SCHEMA = """
CREATE TABLE IF NOT EXISTS learned_images(
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    key INTEGER NOT NULL REFERENCES products(key) ON DELETE CASCADE,
    path TEXT NOT NULL, source TEXT NOT NULL, ref TEXT, learned_ts REAL NOT NULL, cosine REAL NOT NULL);
CREATE INDEX IF NOT EXISTS learned_by_key ON learned_images(key, learned_ts);
CREATE TABLE IF NOT EXISTS learning_review(
    id TEXT PRIMARY KEY, ts REAL NOT NULL, sku TEXT NOT NULL, source TEXT NOT NULL, ref TEXT,
    cosine REAL NOT NULL, threshold REAL NOT NULL, file TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS learning_counts(name TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""
Outcome = Literal["learned", "duplicate", "held", "limited"]
COUNTS = ("learned", "duplicate", "held", "limited", "evicted", "forgotten")
UNCALIBRATED = ("no calibration: every confirmation is held for review; run `storelens calibrate` "
                "(or set learning.hold_below) to learn from confirmations")
RATE_WINDOW_S = 3600.0
UNCALIBRATED_ROW = 2.0  # a review row's threshold when there was none: above every cosine (everything held)


@dataclass(frozen=True, kw_only=True)
class LearnResult:
    """What became of one confirmed crop; ``cosine``: its best cosine to the product's photos before."""

    outcome: Outcome
    sku: str
    cosine: float
    threshold: float | None  # the hold threshold it was judged by (None: uncalibrated, everything is held)
    evicted: int = 0  # older learned photos of the product that left to keep the bound
    catalog_version: int = 0
    reason: str | None = None  # why it was held or limited: far, uncalibrated, rate

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cosine": round(self.cosine, 4),
                "threshold": None if self.threshold is None else round(self.threshold, 4)}


@dataclass(frozen=True, kw_only=True)
class LearnedPhoto:
    """One row of ``learned_images``."""

    image_id: int
    sku: str
    path: str
    source: str
    ref: str | None
    learned_ts: float
    cosine: float


class Learner:
    """Learned photos of one :class:`~edge.catalog.store.Store`; thread-safe (one learn or forget at a time)."""

    def __init__(self, store: Store, settings: LearningSettings | None = None) -> None:
        self.store = store
        self.settings = settings or LearningSettings()
        self.review_dir = store.data_dir / "review"
        self._lock = threading.Lock()
        try:  # a connection of its own: reads, the review and the counts never bump the catalog version
            self._db = connect(store.catalog.path, foreign_keys=True)
            self._db.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise CatalogError(f"cannot open the learning tables in {store.catalog.path}: {e}",
                               hint="check that catalog.data_dir is writable") from e
        if self.hold_below is None:
            log.warning("learning: %s", UNCALIBRATED)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def hold_below(self) -> float | None:
        """Config value, else the stored calibration's ``learn_floor`` (same encoder), else the uncalibrated one
        (None by default: no calibration, no learning)."""
        if self.settings.hold_below is not None:
            return self.settings.hold_below
        cal, enc = self.store.calibration, self.store.image_encoder
        if cal is not None and cal.learn_floor is not None and (enc is None or cal.fingerprint == enc.fingerprint):
            return cal.learn_floor
        return self.settings.uncalibrated_hold_below

    # ---- learning -----------------------------------------------------------------------

    def learn(self, sku: str, crop: np.ndarray, *, source: str, ref: str | None = None, ts: float | None = None,
              embedding: np.ndarray | None = None, hold: bool = True) -> LearnResult:
        """Judge one confirmed crop (BGR) of ``sku`` and learn, skip or hold it (see the module docstring).

        ``embedding``: the crop's vector when the caller already has it (else the store's encoder embeds it).
        ``hold=False``: a person approved it (:mod:`edge.catalog.review`), so a low cosine does not hold it again.
        """
        store = self.store
        product = store.catalog.get(sku)
        if product is None:
            raise InputError(f"sku {sku!r} is not in the catalog", hint="confirm a product the catalog holds")
        if store.image_encoder is None:
            raise InputError("learning needs the image encoder", hint="configure model.image_bundle")
        if crop is None or crop.ndim != 3 or crop.shape[2] != 3 or min(crop.shape[:2]) < 8:
            raise ImageError(f"the crop for {sku!r} is not a BGR image of at least 8x8 pixels",
                             hint="confirm a view the runtime still holds")
        ts = time.time() if ts is None else ts
        if self._over_rate(product.key, ts):  # before the embedding: a flood costs a query each, nothing more
            return self._limited(sku, source)
        vec = _unit(store.image_encoder.embed([crop])[0] if embedding is None else embedding)
        with self._lock:
            if self._over_rate(product.key, ts):
                return self._limited(sku, source)
            photos = self._photo_vectors(product.key)
            cosine = float((photos @ vec).max()) if len(photos) else -1.0
            threshold = self.hold_below
            if hold and (threshold is None or cosine < threshold):
                reason = "uncalibrated" if threshold is None else "far"
                self._hold(sku, crop, source=source, ref=ref, ts=ts, cosine=cosine, threshold=threshold)
                return self._result("held", sku, cosine, threshold, reason=reason)
            if cosine >= self.settings.duplicate_cosine:
                return self._result("duplicate", sku, cosine, threshold)
            path = self._save(sku, crop)
            evicted: list[str] = []

            def add(db: sqlite3.Connection) -> set[int]:
                image_id = store.catalog.add_image(db, product.key, str(path))
                store.catalog.add_vector(db, product.key, modality=IMAGE, fingerprint=self._fingerprint(),
                                         vector=vec, image_id=image_id)
                db.execute("INSERT INTO learned_images(image_id, key, path, source, ref, learned_ts, cosine) "
                           "VALUES(?, ?, ?, ?, ?, ?, ?)", (image_id, product.key, str(path), source, ref, ts, cosine))
                evicted.extend(self._evict(db, product.key))
                return {product.key}

            try:
                version = store.writer.change_photos(add)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            unlink_files(evicted)
            self._count("evicted", len(evicted))
            log.info("learned a photo", extra={"sku": sku, "source": source, "cosine": round(cosine, 3),
                                               "evicted": len(evicted), "catalog_version": version})
            return self._result("learned", sku, cosine, threshold, evicted=len(evicted), version=version)

    def _result(self, outcome: Outcome, sku: str, cosine: float, threshold: float | None, *, evicted: int = 0,
                version: int | None = None, reason: str | None = None) -> LearnResult:
        self._count(outcome)
        return LearnResult(outcome=outcome, sku=sku, cosine=cosine, threshold=threshold, evicted=evicted,
                           catalog_version=self.store.catalog_version if version is None else version, reason=reason)

    def _over_rate(self, key: int, ts: float) -> bool:
        """Whether product ``key`` learned ``max_learned_per_hour`` photos in the hour before ``ts``."""
        bound = self.settings.max_learned_per_hour
        if bound is None:
            return False
        n = self._db.execute("SELECT COUNT(*) FROM learned_images WHERE key = ? AND learned_ts > ?",
                             (key, ts - RATE_WINDOW_S)).fetchone()[0]
        return int(n) >= bound

    def _limited(self, sku: str, source: str) -> LearnResult:
        log.warning("confirmation not learned: the product reached learning.max_learned_per_hour",
                    extra={"sku": sku, "source": source, "limit": self.settings.max_learned_per_hour})
        return self._result("limited", sku, -1.0, self.hold_below, reason="rate")

    def _photo_vectors(self, key: int) -> np.ndarray:
        """Unit vectors of every photo the product has now (enrolled and learned), this encoder's."""
        rows = self._db.execute("SELECT data FROM vectors WHERE key = ? AND modality = ? AND fingerprint = ?",
                                (key, IMAGE, self._fingerprint())).fetchall()
        if not rows:
            return np.zeros((0, 1), np.float32)
        return _unit(np.stack([np.frombuffer(r[0], dtype=np.float32) for r in rows]))

    def _evict(self, db: sqlite3.Connection, key: int) -> list[str]:
        """Inside the learning transaction: the oldest learned photos of ``key`` beyond the bound; their files."""
        excess = int(db.execute("SELECT COUNT(*) FROM learned_images WHERE key = ?", (key,)).fetchone()[0]) \
            - self.settings.max_per_product
        if excess <= 0:
            return []
        rows = db.execute("SELECT image_id, path FROM learned_images WHERE key = ? ORDER BY learned_ts, image_id "
                          "LIMIT ?", (key, excess)).fetchall()
        for image_id, path in rows:  # the image row's cascade takes its vector and its learned_images row
            db.execute("DELETE FROM images WHERE id = ? AND key = ? AND path = ?", (image_id, key, path))
        return [str(r[1]) for r in rows]

    # ---- forgetting ---------------------------------------------------------------------

    def forget(self, *, sku: str | None = None, since: float | None = None) -> int:
        """Remove learned photos (of ``sku``, learned at or after ``since``); returns how many. Enrolled stay."""
        with self._lock:
            self._drop_stale()
            photos = self.learned(sku=sku, since=since)
            if not photos:
                return 0
            ids = [p.image_id for p in photos]

            def drop(db: sqlite3.Connection) -> set[int]:
                keys: set[int] = set()
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    keys |= {int(r[0]) for r in db.execute(
                        f"SELECT key FROM learned_images WHERE image_id IN ({marks})", chunk)}
                    db.execute(f"DELETE FROM images WHERE id IN ({marks})", chunk)
                return keys

            version = self.store.writer.change_photos(drop)
            unlink_files(p.path for p in photos)
            self._count("forgotten", len(photos))
            log.info("forgot learned photos", extra={"photos": len(photos), "sku": sku, "since": since,
                                                     "catalog_version": version})
            return len(photos)

    def learned(self, *, sku: str | None = None, since: float | None = None) -> list[LearnedPhoto]:
        """Learned photos, oldest first (optionally of one sku, learned at or after ``since``)."""
        where: list[str] = ["l.path = i.path"]
        args: list[str | float] = []
        if sku is not None:
            where.append("p.sku = ?")
            args.append(sku)
        if since is not None:
            where.append("l.learned_ts >= ?")
            args.append(since)
        rows = self._db.execute(
            "SELECT l.image_id, p.sku, l.path, l.source, l.ref, l.learned_ts, l.cosine FROM learned_images l "
            "JOIN images i ON i.id = l.image_id AND i.key = l.key JOIN products p ON p.key = l.key "
            f"WHERE {' AND '.join(where)} ORDER BY l.learned_ts, l.image_id", args).fetchall()
        return [LearnedPhoto(image_id=int(r[0]), sku=str(r[1]), path=str(r[2]), source=str(r[3]),
                             ref=None if r[4] is None else str(r[4]), learned_ts=float(r[5]), cosine=float(r[6]))
                for r in rows]

    def _drop_stale(self) -> None:
        """Rows whose photo is gone or is another photo now (a catalog snapshot replaced the images table)."""
        self._db.execute("DELETE FROM learned_images WHERE NOT EXISTS (SELECT 1 FROM images i WHERE i.id = "
                         "learned_images.image_id AND i.key = learned_images.key AND i.path = learned_images.path)")

    def sku_for_barcode(self, barcode: str) -> str | None:
        """The product whose catalog ``barcode`` this is (leading zeros ignored: UPC-A and EAN-13 agree); None
        when no product, or more than one, has it."""
        code = barcode.strip()
        rows = self._db.execute("SELECT sku FROM products WHERE barcode IS NOT NULL AND barcode != '' AND "
                                "ltrim(trim(barcode), '0') = ltrim(?, '0') LIMIT 2", (code,)).fetchall()
        return str(rows[0][0]) if len(rows) == 1 and code else None

    # ---- review and counts --------------------------------------------------------------

    def _hold(self, sku: str, crop: np.ndarray, *, source: str, ref: str | None, ts: float, cosine: float,
              threshold: float | None) -> None:
        if self.settings.review_max <= 0:
            return
        rid = uuid.uuid4().hex
        self.review_dir.mkdir(parents=True, exist_ok=True)
        name = f"{rid}.jpg"
        if not cv2.imwrite(str(self.review_dir / name), crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            log.warning("a held crop could not be saved for review", extra={"sku": sku})
            return
        with transaction(self._db) as db:
            db.execute("INSERT INTO learning_review(id, ts, sku, source, ref, cosine, threshold, file) "
                       "VALUES(?, ?, ?, ?, ?, ?, ?, ?)", (rid, ts, sku, source, ref, cosine,
                                                           UNCALIBRATED_ROW if threshold is None else threshold, name))
            old = db.execute("SELECT id, file FROM learning_review ORDER BY ts DESC, id LIMIT -1 OFFSET ?",
                             (self.settings.review_max,)).fetchall()
            db.executemany("DELETE FROM learning_review WHERE id = ?", [(r[0],) for r in old])
        unlink_files(self.review_dir / r[1] for r in old)
        log.info("confirmation held for review", extra={"sku": sku, "source": source, "cosine": round(cosine, 3),
                                                        "threshold": threshold})

    def held(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest held crops (review rows with the file's path), newest first."""
        rows = self._db.execute("SELECT id, ts, sku, source, ref, cosine, threshold, file FROM learning_review "
                                "ORDER BY ts DESC LIMIT ?", (int(limit),)).fetchall()
        keys = ("id", "ts", "sku", "source", "ref", "cosine", "threshold")
        return [{**dict(zip(keys, r[:7], strict=True)), "path": str(self.review_dir / r[7])} for r in rows]

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            self._db.execute("INSERT INTO learning_counts(name, n) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET "
                             "n = n + excluded.n", (name, n))

    def stats(self) -> dict[str, Any]:
        """Counts since the catalog was created, learned photos now, held crops kept, the hold threshold."""
        counts = dict.fromkeys(COUNTS, 0) | {str(k): int(n) for k, n in self._db.execute(
            "SELECT name, n FROM learning_counts")}
        photos = int(self._db.execute("SELECT COUNT(*) FROM learned_images").fetchone()[0])
        review = int(self._db.execute("SELECT COUNT(*) FROM learning_review").fetchone()[0])
        hold = self.hold_below
        out: dict[str, Any] = {**counts, "photos": photos, "review": review, "calibrated": hold is not None,
                               "hold_below": None if hold is None else round(hold, 4),
                               "max_learned_per_hour": self.settings.max_learned_per_hour}
        if hold is None:
            out["holding"] = UNCALIBRATED
        return out

    # ---- helpers ------------------------------------------------------------------------

    def _fingerprint(self) -> str:
        enc = self.store.image_encoder
        if enc is None:
            raise InputError("learning needs the image encoder", hint="configure model.image_bundle")
        return enc.fingerprint

    def _save(self, sku: str, crop: np.ndarray) -> Path:
        folder = self.store.data_dir / "images" / hashlib.sha1(sku.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"learned-{uuid.uuid4().hex[:16]}.jpg"
        if not cv2.imwrite(str(path), crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise ImageError(f"the crop for {sku!r} could not be saved as JPEG", hint="check the disk")
        return path


def learn_floor(store: Store, embeddings: np.ndarray, skus: Sequence[str], *,
                quantile: float = HOLD_QUANTILE) -> float | None:
    """The hold threshold from labelled photos: the ``quantile`` of their best cosine to their own product's
    photos (enrolled products only; None when no labelled photo is of one)."""
    enc = store.image_encoder
    if enc is None or len(embeddings) == 0:
        return None
    keys, vecs = store.catalog.vectors(IMAGE, enc.fingerprint)
    by_sku = {p.sku: p.key for p in store.catalog.products()}
    q = _unit(np.asarray(embeddings, np.float32))
    v = _unit(vecs) if len(vecs) else vecs
    own = [float((v[keys == by_sku[s]] @ q[i]).max()) for i, s in enumerate(skus)
           if s in by_sku and np.any(keys == by_sku[s])]
    return round(float(np.quantile(own, quantile)), 4) if own else None


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def unlink_files(paths: Any) -> None:
    for p in paths:
        try:
            Path(p).unlink(missing_ok=True)
        except OSError as e:  # a photo file left behind costs disk, not correctness
            log.warning("could not delete %s: %s", p, e)
