"""The product catalog in SQLite (stdlib ``sqlite3``, WAL): products, reference images, text, vectors.

Tables (one file, ``<data_dir>/catalog.db``):

- ``products``: ``key`` (the integer the indexes store; AUTOINCREMENT so a removed product's
  key is never reused by a later one), ``sku`` (unique), name, description, price, location,
  barcode, free ``attributes`` (JSON).
- ``images``: a product's reference images (path of the file as given or as saved on enroll).
- ``product_text``: extra text per product and *source* (``ocr``, ``information``, ...), so
  other parts (OCR, fusion) can add words without touching name/description.
- ``products_fts``: FTS5 over name + description + all extra text (rowid = product key),
  refreshed whenever one of them changes; BM25 ranks lexical queries.
- ``search_fts``: the same text by angle (name, Swedish name, brand, category, descriptions,
  other) for shopper search, refreshed with ``products_fts`` (:mod:`edge.catalog.views`).
- ``vectors``: every embedding, float32 blob, tagged with modality and encoder fingerprint.
  Indexes can be rebuilt (other dtype, crash) without re-reading images, and per-product
  embeddings are available to recommendation code (:meth:`Catalog.product_vectors`).
- ``meta``: the catalog ``version`` (bumped by every write; indexes record the version they
  reflect) and the stored calibration.

The catalog does no embedding and no index work: :class:`edge.catalog.store.Store` does, holding the
writer lock around both.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.catalog import views
from edge.core.errors import CatalogError
from edge.core.sqlite import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products(
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    sku TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    price REAL, location TEXT, barcode TEXT,
    attributes TEXT NOT NULL DEFAULT '{}',
    updated_utc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images(
    id INTEGER PRIMARY KEY,
    key INTEGER NOT NULL REFERENCES products(key) ON DELETE CASCADE,
    path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS product_text(
    key INTEGER NOT NULL REFERENCES products(key) ON DELETE CASCADE,
    source TEXT NOT NULL, text TEXT NOT NULL, PRIMARY KEY(key, source));
CREATE TABLE IF NOT EXISTS vectors(
    id INTEGER PRIMARY KEY,
    key INTEGER NOT NULL REFERENCES products(key) ON DELETE CASCADE,
    modality TEXT NOT NULL, fingerprint TEXT NOT NULL,
    image_id INTEGER REFERENCES images(id) ON DELETE CASCADE,
    data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS vectors_by_model ON vectors(modality, fingerprint, key);
CREATE VIRTUAL TABLE IF NOT EXISTS products_fts USING fts5(
    name, description, extra, tokenize='unicode61 remove_diacritics 2');
"""
WRITER_WAIT_S = 30.0  # a write waits this long for another process's write (an import) to finish
# BM25 column weights: a word in the name says more than one in the description or extra text.
BM25_WEIGHTS = (4.0, 1.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class ProductFields:
    """What describes a product, wherever it comes from (a catalog row, an import row)."""

    sku: str
    name: str
    description: str = ""
    price: float | None = None
    location: str | None = None
    barcode: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """The product fields alone, as keyword arguments for another :class:`ProductFields`."""
        return {"sku": self.sku, "name": self.name, "description": self.description, "price": self.price,
                "location": self.location, "barcode": self.barcode, "attributes": self.attributes}


@dataclass(frozen=True, kw_only=True)
class Product(ProductFields):
    """One catalog product as stored; ``key`` is the integer the indexes hold."""

    key: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.fields(), "attributes": dict(self.attributes)}


class Catalog:
    """A catalog database; safe to share between threads (one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = connect(self.path, foreign_keys=True, timeout_s=WRITER_WAIT_S)
            self._db.executescript(_SCHEMA + views.SCHEMA)
            if views.missing(self._db):  # a catalog from before search_fts: filled once
                with transaction(self._db) as db:
                    views.backfill(db)
        except sqlite3.DatabaseError as e:
            raise CatalogError(f"cannot open catalog database {self.path}: {e}",
                               hint="check the path and permissions, or move a corrupt file aside") from e
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- transactions and version -------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that bumps the catalog version once (all or nothing)."""
        with self._lock, transaction(self._db) as db:
            yield db
            db.execute("INSERT INTO meta(key, value) VALUES('version', '1') ON CONFLICT(key) "
                       "DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    @property
    def version(self) -> int:
        """Increases with every committed change; indexes record the version they reflect."""
        return int(self.get_meta("version") or 0)

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store a value without bumping the version (calibration, bookkeeping)."""
        with self._lock:
            self._db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                             (key, value, value))

    # ---- products -----------------------------------------------------------------------

    def upsert_product(self, db: sqlite3.Connection, product: Product) -> int:
        """Insert or update a product inside a :meth:`transaction`; return its key."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        row = db.execute("SELECT key FROM products WHERE sku = ?", (product.sku,)).fetchone()
        values = (product.name, product.description or "", product.price, product.location, product.barcode,
                  json.dumps(dict(product.attributes), ensure_ascii=False), now)
        if row is None:
            cur = db.execute("INSERT INTO products(name, description, price, location, barcode, attributes, "
                             "updated_utc, sku) VALUES(?, ?, ?, ?, ?, ?, ?, ?)", (*values, product.sku))
            key = int(cur.lastrowid or 0)
        else:
            key = int(row[0])
            db.execute("UPDATE products SET name=?, description=?, price=?, location=?, barcode=?, attributes=?, "
                       "updated_utc=? WHERE key=?", (*values, key))
        self._refresh_fts(db, key)
        return key

    def delete_product(self, db: sqlite3.Connection, sku: str) -> int | None:
        """Delete a product (images, text, vectors cascade) inside a transaction; return its key."""
        row = db.execute("SELECT key FROM products WHERE sku = ?", (sku,)).fetchone()
        if row is None:
            return None
        db.execute("DELETE FROM products_fts WHERE rowid = ?", (row[0],))
        db.execute("DELETE FROM products WHERE key = ?", (row[0],))
        views.refresh(db, int(row[0]))
        return int(row[0])

    def clear_media(self, db: sqlite3.Connection, key: int) -> None:
        """Forget a product's images and vectors (before re-enrolling it)."""
        db.execute("DELETE FROM vectors WHERE key = ?", (key,))
        db.execute("DELETE FROM images WHERE key = ?", (key,))

    def add_image(self, db: sqlite3.Connection, key: int, path: str) -> int:
        cur = db.execute("INSERT INTO images(key, path) VALUES(?, ?)", (key, path))
        return int(cur.lastrowid or 0)

    def add_vector(self, db: sqlite3.Connection, key: int, *, modality: str, fingerprint: str,
                   vector: np.ndarray, image_id: int | None = None) -> None:
        blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        db.execute("INSERT INTO vectors(key, modality, fingerprint, image_id, data) VALUES(?, ?, ?, ?, ?)",
                   (key, modality, fingerprint, image_id, blob))

    def delete_vectors(self, db: sqlite3.Connection, *, modality: str, fingerprint: str) -> None:
        db.execute("DELETE FROM vectors WHERE modality = ? AND fingerprint = ?", (modality, fingerprint))

    def set_text(self, db: sqlite3.Connection, key: int, source: str, text: str | None) -> None:
        """Set (or with ``None`` clear) the extra text of one source for a product; refreshes FTS."""
        if text is None or not text.strip():
            db.execute("DELETE FROM product_text WHERE key = ? AND source = ?", (key, source))
        else:
            db.execute("INSERT INTO product_text(key, source, text) VALUES(?, ?, ?) ON CONFLICT(key, source) "
                       "DO UPDATE SET text = excluded.text", (key, source, text))
        self._refresh_fts(db, key)

    def _refresh_fts(self, db: sqlite3.Connection, key: int) -> None:
        row = db.execute("SELECT name, description FROM products WHERE key = ?", (key,)).fetchone()
        extra = " \n".join(r[0] for r in db.execute(
            "SELECT text FROM product_text WHERE key = ? ORDER BY source", (key,)))
        db.execute("DELETE FROM products_fts WHERE rowid = ?", (key,))
        if row is not None:
            db.execute("INSERT INTO products_fts(rowid, name, description, extra) VALUES(?, ?, ?, ?)",
                       (key, row[0], row[1], extra))
        views.refresh(db, key)

    # ---- reads --------------------------------------------------------------------------

    def get(self, sku: str) -> Product | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLS} FROM products WHERE sku = ?", (sku,)).fetchone()
        return None if row is None else _product(row)

    def by_keys(self, keys: Iterable[int]) -> dict[int, Product]:
        wanted = sorted({int(k) for k in keys})
        out: dict[int, Product] = {}
        with self._lock:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for row in self._db.execute(f"SELECT {_COLS} FROM products WHERE key IN ({marks})", chunk):
                    out[int(row[0])] = _product(row)
        return out

    def products(self) -> list[Product]:
        with self._lock:
            return [_product(r) for r in self._db.execute(f"SELECT {_COLS} FROM products ORDER BY sku")]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM products").fetchone()[0])

    def images(self, sku: str) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT i.path FROM images i JOIN products p ON p.key = i.key WHERE p.sku = ? ORDER BY i.id", (sku,))]

    def all_images(self) -> list[tuple[int, int, str]]:
        """(product key, image id, path) of every reference image."""
        with self._lock:
            return [(int(a), int(b), str(c)) for a, b, c in self._db.execute(
                "SELECT key, id, path FROM images ORDER BY key, id")]

    def texts(self, key: int) -> dict[str, str]:
        with self._lock:
            return {s: t for s, t in self._db.execute(
                "SELECT source, text FROM product_text WHERE key = ? ORDER BY source", (key,))}

    def vectors(self, modality: str, fingerprint: str) -> tuple[np.ndarray, np.ndarray]:
        """All stored vectors of a modality and encoder: (keys uint64 (M,), vectors float32 (M, D))."""
        with self._lock:
            rows = self._db.execute("SELECT key, data FROM vectors WHERE modality = ? AND fingerprint = ? "
                                    "ORDER BY key, id", (modality, fingerprint)).fetchall()
        if not rows:
            return np.zeros(0, np.uint64), np.zeros((0, 0), np.float32)
        keys = np.fromiter((r[0] for r in rows), dtype=np.uint64, count=len(rows))
        return keys, np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    def vector_counts(self, modality: str, fingerprint: str) -> tuple[int, int]:
        """(stored vectors, products holding one) of a modality and encoder: what its index must hold."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM vectors WHERE modality = ? AND "
                                   "fingerprint = ?", (modality, fingerprint)).fetchone()
        return int(row[0]), int(row[1])

    def image_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def product_vectors(self, modality: str, fingerprint: str) -> dict[str, np.ndarray]:
        """sku -> the unit-normalised mean of that product's vectors (for recommendations)."""
        keys, vecs = self.vectors(modality, fingerprint)
        if len(keys) == 0:
            return {}
        products = self.by_keys(keys.tolist())
        out: dict[str, np.ndarray] = {}
        for key in np.unique(keys):
            mean = vecs[keys == key].mean(axis=0)
            norm = float(np.linalg.norm(mean))
            if int(key) in products and norm > 0:
                out[products[int(key)].sku] = (mean / norm).astype(np.float32)
        return out

    def fts_search(self, query: str, k: int) -> list[tuple[int, float]]:
        """(product key, BM25 relevance) best first; relevance is -bm25 (higher is better)."""
        match = fts_query(query)
        if not match or k <= 0:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, bm25(products_fts, ?, ?, ?) AS s FROM products_fts WHERE products_fts MATCH ? "
                "ORDER BY s LIMIT ?", (*BM25_WEIGHTS, match, int(k))).fetchall()
        return [(int(r[0]), -float(r[1])) for r in rows]

    def search_fields(self, match: str, k: int) -> list[tuple[int, float]]:
        """(product key, BM25 relevance) best first for an FTS5 expression over the per-angle fields."""
        with self._lock:
            return views.search(self._db, match, k)

    def search_vocabulary(self) -> list[tuple[str, int]]:
        """Every word of the per-angle fields with the number of products holding it."""
        with self._lock:
            return views.vocabulary_rows(self._db)

    def product_names(self) -> dict[int, str]:
        with self._lock:
            return {int(k): str(n) for k, n in self._db.execute("SELECT key, name FROM products")}


_COLS = "key, sku, name, description, price, location, barcode, attributes"


def _product(row: Sequence[Any]) -> Product:
    return Product(key=int(row[0]), sku=row[1], name=row[2], description=row[3] or "", price=row[4],
                   location=row[5], barcode=row[6], attributes=json.loads(row[7] or "{}"))


def fts_query(text: str) -> str:
    """User words -> a safe FTS5 query: each word quoted (no FTS syntax injection), as a prefix, OR-ed."""
    words = [w for w in re.findall(r"\w+", text.lower()) if w]
    return " OR ".join(f'"{w}"*' for w in dict.fromkeys(words))
