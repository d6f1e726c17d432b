"""Catalog and index agree: checked on every open and reload, repaired from the stored embeddings.

A write commits SQLite first, then publishes the next index generation
(:mod:`edge.catalog.writer`). A process killed in between leaves an index that reflects an
older catalog version; a disk error can leave an unreadable or corrupt index file. Both would
otherwise go unnoticed (searches return old products, or miss new ones), so a
:class:`~edge.catalog.store.Store` opens each index through :func:`open_consistent`:

- the sidecar's ``catalog_version``, vector and product counts are compared with the catalog
  (and the file's size and checksum with the sidecar, :mod:`edge.catalog.index`);
- on a mismatch the single-writer lock is taken (a write in progress finishes first) and the
  check repeated; if the index still disagrees it is rebuilt from the embeddings SQLite stores
  (the source of truth), logged and counted (:class:`IndexRepairs`, in the runtime's ``status``);
- when the catalog holds no embeddings of the encoder in use to rebuild from, the open is
  refused with an error that says how to fix it (re-embed, or point the config back at the
  encoder the index was built with).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge.catalog import index as ix
from edge.catalog.db import Catalog
from edge.core.errors import CatalogError, IndexMismatchError

log = logging.getLogger("storelens.store")

IMAGE = "image"
LOCK_WAIT_S = 10.0  # a mismatch waits this long for a write in progress before judging the index


class Encoder(Protocol):
    @property
    def fingerprint(self) -> str: ...

    @property
    def dim(self) -> int: ...


@dataclass
class IndexRepairs:
    """Indexes this process rebuilt because they disagreed with the catalog (``status.catalog``)."""

    rebuilds: int = 0
    last: list[str] = field(default_factory=list)  # the latest few reasons, newest last

    def add(self, reason: str) -> None:
        self.rebuilds += 1
        self.last = [*self.last[-4:], reason]

    def to_dict(self) -> dict[str, Any]:
        return {"index_rebuilds": self.rebuilds, "last_rebuild": self.last[-1] if self.last else None}


class StoreParts(Protocol):
    """What the check needs from a :class:`~edge.catalog.store.Store`."""

    catalog: Catalog
    dtype: str
    view: bool
    repairs: IndexRepairs

    @property
    def data_dir(self) -> Any: ...

    @property
    def writer(self) -> Any: ...  # edge.catalog.writer.CatalogWriter (rebuild_one)


def open_consistent(store: StoreParts, modality: str, enc: Encoder) -> ix.VectorIndex | None:
    """The current generation of ``modality``'s index, checked against the catalog (rebuilt if it diverged)."""
    idx, problem = _open_and_check(store, modality, enc)
    if problem is None:
        return idx
    try:
        with ix.writer_lock(store.data_dir, timeout_s=LOCK_WAIT_S):
            idx, problem = _open_and_check(store, modality, enc)  # a writer may just have published
            if problem is None:
                return idx
            _refuse_without_embeddings(store, modality, enc, problem)
            log.warning("%s index disagrees with the catalog (%s): rebuilding it from the stored embeddings",
                        modality, problem, extra={"modality": modality, "data_dir": str(store.data_dir)})
            store.writer.rebuild_one(modality, enc)
    except CatalogError as e:
        if "writer.lock" not in e.message or idx is None:
            raise
        log.info("a catalog write is in progress: the %s index is checked again on the next reload", modality)
        return idx
    store.repairs.add(f"{modality}: {problem}")
    idx, problem = _open_and_check(store, modality, enc)
    if problem is not None:
        raise CatalogError(f"the rebuilt {modality} index still disagrees with the catalog: {problem}",
                           hint="run `storelens catalog reindex`; if that fails too, the catalog database is damaged")
    return idx


def same_generation(store: StoreParts, modality: str, cur: ix.VectorIndex) -> bool:
    """True when ``cur`` is still the current generation and the catalog has not moved since it was checked."""
    try:
        meta = ix.read_meta(store.data_dir, modality)
    except CatalogError:
        return False  # an unreadable sidecar: open_consistent says why and repairs it
    return meta is not None and meta.file == cur.meta.file and meta.catalog_version == store.catalog.version


def _open_and_check(store: StoreParts, modality: str, enc: Encoder) -> tuple[ix.VectorIndex | None, str | None]:
    """The opened index (None when there is none or it is unreadable) and why it disagrees (None: it agrees)."""
    try:
        idx = ix.VectorIndex.open(store.data_dir, modality, fingerprint=enc.fingerprint, ndim=enc.dim,
                                  dtype=store.dtype, view=store.view)
    except IndexMismatchError:
        raise  # built by another encoder or dtype: a configuration problem, never silently rebuilt
    except CatalogError as e:  # unreadable sidecar or data file, checksum mismatch
        return None, e.message
    stored, products = store.catalog.vector_counts(modality, enc.fingerprint)
    if idx is None:
        return None, (f"no {modality} index, but the catalog stores {stored} {modality} embeddings" if stored else None)
    m, version = idx.meta, store.catalog.version
    if m.catalog_version != version:
        return idx, f"it reflects catalog version {m.catalog_version}, the catalog is at version {version}"
    if (m.vectors, m.products) != (stored, products):
        return idx, (f"it holds {m.vectors} vectors of {m.products} products, the catalog stores {stored} "
                     f"of {products}")
    if idx.size != m.vectors:
        return idx, f"its file holds {idx.size} vectors, its sidecar says {m.vectors}"
    return idx, None


def _refuse_without_embeddings(store: StoreParts, modality: str, enc: Encoder, problem: str) -> None:
    """Raise when a rebuild would lose products: the catalog has none of this encoder's embeddings to use."""
    stored, _ = store.catalog.vector_counts(modality, enc.fingerprint)
    needed = store.catalog.image_count() if modality == IMAGE else store.catalog.count()
    if stored == 0 and needed > 0:
        raise CatalogError(
            f"the {modality} index in {store.data_dir} disagrees with the catalog ({problem}) and the catalog "
            f"stores no {modality} embeddings from encoder {enc.fingerprint} to rebuild it from",
            hint="re-embed the catalog with this encoder: `storelens catalog reindex --reembed` (or point "
                 "model settings back at the encoder the catalog was embedded with)")

