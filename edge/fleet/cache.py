"""The build's embedding cache: what makes ``storelens catalog build`` resumable.

Every photo embedded is written here (one SQLite transaction per batch, as results stream in),
keyed by the bundle fingerprint and the photo's path, size and modification time, so a build
that crashed, or the next build of a changed table, embeds only photos it has not seen. Product
texts are cached the same way (keyed by the text's sha1), since text vectors are embedded on
the driver. Unreadable photos are not cached: they are tried again next time.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from edge.core.sqlite import connect, transaction
from edge.models.encoders.base import TextEncoder

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings(
    fingerprint TEXT NOT NULL, item TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY(fingerprint, item)
) WITHOUT ROWID;
"""
_CHUNK = 500


def photo_key(path: str | Path) -> str | None:
    """``path|size|mtime_ns`` of a photo (a changed file is embedded again); None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def text_key(text: str) -> str:
    return "text:" + hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """(fingerprint, item) -> float32 vector in ``<workdir>/embeddings.db``; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = connect(path)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get_many(self, fingerprint: str, items: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for a in range(0, len(items), _CHUNK):
                chunk = list(items[a : a + _CHUNK])
                marks = ",".join("?" * len(chunk))
                for item, data in self._db.execute(
                        f"SELECT item, data FROM embeddings WHERE fingerprint = ? AND item IN ({marks})",
                        (fingerprint, *chunk)):
                    out[str(item)] = np.frombuffer(data, dtype=np.float32)
        return out

    def put_many(self, fingerprint: str, rows: Iterable[tuple[str, np.ndarray]]) -> int:
        """Store vectors in one transaction (a crash keeps every batch stored before it); returns how many."""
        blobs = [(fingerprint, item, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for item, v in rows]
        with self._lock, transaction(self._db):
            self._db.executemany("INSERT OR REPLACE INTO embeddings(fingerprint, item, data) VALUES(?, ?, ?)", blobs)
        return len(blobs)

    def count(self, fingerprint: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM embeddings WHERE fingerprint = ?",
                                        (fingerprint,)).fetchone()[0])


class CachedTextEncoder:
    """A text encoder whose vectors are looked up in the cache first (same dim and fingerprint as ``encoder``)."""

    def __init__(self, encoder: TextEncoder, cache: EmbeddingCache) -> None:
        self._enc = encoder
        self._cache = cache
        self.embedded = 0  # texts actually embedded (not found in the cache)

    @property
    def dim(self) -> int:
        return self._enc.dim

    @property
    def fingerprint(self) -> str:
        return self._enc.fingerprint

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        found = self._cache.get_many(self.fingerprint, keys)
        todo = sorted({i for i, k in enumerate(keys) if k not in found}, key=lambda i: keys[i])
        if todo:
            vecs = self._enc.embed([texts[i] for i in todo])
            new = {keys[i]: np.asarray(v, np.float32) for i, v in zip(todo, vecs, strict=True)}
            self._cache.put_many(self.fingerprint, new.items())
            found.update(new)
            self.embedded += len(todo)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out
