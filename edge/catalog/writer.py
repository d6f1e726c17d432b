"""Writing the catalog: enroll, import, remove, reindex and re-embed, then publish the next index generation.

Every write takes the catalog's writer lock (:func:`edge.catalog.index.writer_lock`), commits
SQLite in one transaction, then applies the same change to each modality's index in a private
copy, saves it as the next generation beside the current one and swaps it in atomically
(:func:`edge.catalog.index.publish`). Readers (:class:`~edge.catalog.store.Store`) keep the
generation they opened until they reload, so reads never block on writes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from edge.catalog import index as ix
from edge.catalog.db import Catalog, Product
from edge.catalog.importers.tables import ImportIssue, ProductRecord
from edge.catalog.views import VIEWS_MODALITY, product_views
from edge.core.errors import CatalogError, ImageError, InputError
from edge.core.sqlite import disk_full
from edge.models.encoders.base import ImageEncoder, TextEncoder
from edge.models.preprocess import read_image

log = logging.getLogger("storelens.store")

IMAGE, TEXT, VIEWS = "image", "text", VIEWS_MODALITY
ENROLL_JPEG_QUALITY = 95  # reference photos sent as arrays are kept as JPEG to re-embed them later
FEW_VECTORS = 1000  # below this many vectors the i8 scale is not estimated from the data


@dataclass(frozen=True, kw_only=True)
class ImportReport:
    """The outcome of an import or enroll: what was added, and every skipped row or image."""

    rows: int = 0
    products_added: int = 0
    products_replaced: int = 0
    images_added: int = 0
    rows_skipped: int = 0
    issues: tuple[ImportIssue, ...] = ()
    catalog_version: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "products_added": self.products_added,
                "products_replaced": self.products_replaced, "images_added": self.images_added,
                "rows_skipped": self.rows_skipped, "issues_count": len(self.issues),
                "issues": [str(i) for i in self.issues], "catalog_version": self.catalog_version}


@dataclass
class _Batch:
    """Index changes collected inside one write transaction."""

    remove: set[int] = field(default_factory=set)
    keep_images: set[int] = field(default_factory=set)  # updated without new photos: their image vectors stay
    add: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=lambda: {IMAGE: [], TEXT: [], VIEWS: []})


class IndexReader(Protocol):
    """What a writer needs from the store it writes for: its parts, and a way to see the new generation."""

    catalog: Catalog
    data_dir: Path
    image_encoder: ImageEncoder | None
    text_encoder: TextEncoder | None
    dtype: str
    threads: int
    expansion_search: int

    def reload(self) -> bool: ...

    def reopen_indexes(self) -> None: ...


class CatalogWriter:
    """The write side of a :class:`~edge.catalog.store.Store` (same folder, encoders and index dtype)."""

    def __init__(self, store: IndexReader) -> None:
        self.store = store
        self.catalog = store.catalog
        self.data_dir = store.data_dir
        self.image_encoder = store.image_encoder
        self.text_encoder = store.text_encoder
        self.dtype = store.dtype
        self.threads = store.threads
        self.expansion_search = store.expansion_search

    def enroll(self, sku: str, *, name: str, images: Sequence[np.ndarray | str | Path] = (), description: str = "",
               price: float | None = None, location: str | None = None, barcode: str | None = None,
               attributes: Mapping[str, Any] | None = None, replace: bool = True) -> ImportReport:
        """Add or (``replace=True``) update one product with reference images (BGR arrays or paths).

        Arrays are saved as JPEG under ``<data_dir>/images/<sku>/`` so the catalog can be re-embedded later.
        Raises :class:`ImageError` when none of the given images can be read.
        """
        paths = [self._save_array(sku, i, im) if isinstance(im, np.ndarray) else Path(im)
                 for i, im in enumerate(images)]
        rec = ProductRecord(sku=sku, name=name, description=description, price=price, location=location,
                            barcode=barcode, attributes=dict(attributes or {}), images=tuple(paths), source="enroll")
        report = self.import_records([rec], replace=replace, progress=False)
        if report.rows_skipped:
            first = report.issues[0]
            raise (ImageError if "image" in first.message else CatalogError)(
                f"could not enroll {sku!r}: {first.message}", hint="; ".join(str(i) for i in report.issues[1:])
                or "fix the input and retry")
        return report

    def import_records(self, records: Iterable[ProductRecord | ImportIssue], *, replace: bool = False,
                       progress: bool = True, total: int | None = None) -> ImportReport:
        """Enroll many products; bad rows and images are skipped, counted and reported, never fatal."""
        from tqdm import tqdm

        issues: list[ImportIssue] = []
        counts = {"rows": 0, "added": 0, "replaced": 0, "images": 0, "skipped": 0}
        batch = _Batch()
        with ix.writer_lock(self.data_dir), self._disk_guard("import"):
            with self.catalog.transaction() as db:
                for rec in tqdm(records, total=total, desc="import", unit="product", disable=not progress):
                    counts["rows"] += 1
                    if isinstance(rec, ImportIssue):
                        issues.append(rec)
                        counts["skipped"] += 1
                        continue
                    before = len(batch.add[IMAGE])
                    counts[self._enroll_one(db, rec, replace=replace, batch=batch, issues=issues)] += 1
                    counts["images"] += len(batch.add[IMAGE]) - before
            self._publish(batch)
        self.store.reload()
        report = ImportReport(rows=counts["rows"], products_added=counts["added"],
                              products_replaced=counts["replaced"], images_added=counts["images"],
                              rows_skipped=counts["skipped"], issues=tuple(issues),
                              catalog_version=self.catalog.version)
        for issue in issues:
            log.warning("skipped: %s", issue)
        return report

    def _enroll_one(self, db: Any, rec: ProductRecord, *, replace: bool, batch: _Batch,
                    issues: list[ImportIssue]) -> str:
        def skip(msg: str) -> str:
            issues.append(ImportIssue(source=rec.source, line=rec.line, sku=rec.sku, message=msg))
            return "skipped"

        existing = self.catalog.get(rec.sku)
        if existing is not None and not replace:
            return skip(f"sku {rec.sku!r} is already in the catalog (pass --replace to update it)")
        if rec.images and self.image_encoder is None:
            return skip("images given but no image encoder is loaded")
        good: list[tuple[Path, np.ndarray]] = []
        for p in rec.images:
            try:
                good.append((p, read_image(p)))
            except ImageError as e:
                issues.append(ImportIssue(source=rec.source, line=rec.line, sku=rec.sku, message=f"image skipped: {e}"))
        if rec.images and not good:
            return skip(f"no readable image for sku {rec.sku!r}")
        key = self.catalog.upsert_product(db, Product(key=0, **rec.fields()))
        if existing is not None and not rec.images:  # a new price or description keeps the product's photos
            db.execute("DELETE FROM vectors WHERE key = ? AND modality != ?", (key, IMAGE))
            batch.remove.add(key)
            batch.keep_images.add(key)
        elif existing is not None:
            self.catalog.clear_media(db, key)
            batch.remove.add(key)
        for source, text in rec.extra_text.items():
            self.catalog.set_text(db, key, source, text)
        if good and self.image_encoder is not None:
            vecs = self.image_encoder.embed([im for _, im in good])
            for (p, _), v in zip(good, vecs, strict=True):
                image_id = self.catalog.add_image(db, key, str(p))
                self.catalog.add_vector(db, key, modality=IMAGE, fingerprint=self.image_encoder.fingerprint,
                                        vector=v, image_id=image_id)
                batch.add[IMAGE].append((key, v))
        self._embed_text(db, key, batch)
        return "replaced" if existing is not None else "added"

    def _modalities(self) -> tuple[tuple[str, ImageEncoder | TextEncoder | None], ...]:
        """Each index and the encoder that fills it (the view vectors come from the text encoder)."""
        return (IMAGE, self.image_encoder), (TEXT, self.text_encoder), (VIEWS, self.text_encoder)

    def _embed_text(self, db: Any, key: int, batch: _Batch | None) -> None:
        """A product's text vectors: name + description (``text``); that one again and its views
        (``text-views``, :meth:`edge.catalog.views.TextViews.vector_texts`), from what the transaction stored."""
        if self.text_encoder is None:
            return
        product = self.catalog.by_keys([key])[key]
        views = product_views(product.name, product.description, product.attributes, self.catalog.texts(key))
        vecs = self.text_encoder.embed([text_to_embed(product.name, product.description), *views.vector_texts()])
        rows = [(TEXT, vecs[0])] + [(VIEWS, v) for v in vecs]  # one search of text-views sees every angle
        for modality, v in rows:
            self.catalog.add_vector(db, key, modality=modality, fingerprint=self.text_encoder.fingerprint, vector=v)
            if batch is not None:
                batch.add[modality].append((key, v))

    def remove(self, sku: str) -> bool:
        """Remove a product and its vectors; False when the sku is not in the catalog."""
        batch = _Batch()
        with ix.writer_lock(self.data_dir), self._disk_guard("remove"):
            if self.catalog.get(sku) is None:
                return False  # nothing changes, so the catalog version does not move either
            with self.catalog.transaction() as db:
                key = self.catalog.delete_product(db, sku)
            if key is None:
                return False
            batch.remove.add(key)
            self._publish(batch)
        self.store.reload()
        return True

    def set_product_text(self, sku: str, source: str, text: str | None) -> None:
        """Add extra searchable text of one ``source`` (e.g. ``ocr``) to a product (None clears it)."""
        product = self.catalog.get(sku)
        if product is None:
            raise InputError(f"sku {sku!r} is not in the catalog", hint="enroll it first")
        with ix.writer_lock(self.data_dir), self._disk_guard("set product text"):
            with self.catalog.transaction() as db:
                self.catalog.set_text(db, product.key, source, text)
            ix.restamp(self.data_dir, self.catalog.version)  # no vector changed: the indexes reflect it too

    def rebuild_indexes(self) -> None:
        """Rebuild every index from the vectors stored in SQLite (e.g. after changing catalog.index_dtype)."""
        with ix.writer_lock(self.data_dir), self._disk_guard("reindex"):
            for modality, enc in self._modalities():
                if enc is None:
                    continue
                keys, vecs = self.catalog.vectors(modality, enc.fingerprint)
                meta = self._new_meta(modality, enc, vecs)
                index = ix.new_usearch(meta)
                if len(keys):
                    index.add(keys, ix.quantize(vecs, dtype=self.dtype, i8_scale=meta.i8_scale), threads=self.threads)
                ix.publish(self.data_dir, index, ix.IndexMeta.from_dict(
                    {**meta.to_dict(), "products": len(np.unique(keys))}))
            self.store.reopen_indexes()

    def reembed(self, *, progress: bool = True) -> ImportReport:
        """Re-embed every stored reference image and product text with the loaded encoders, then rebuild
        the indexes (after an encoder bundle change). Unreadable images are reported and skipped."""
        from tqdm import tqdm

        if self.image_encoder is None or self.text_encoder is None:
            raise InputError("re-embedding needs both encoders", hint="configure model.image_bundle and text_bundle")
        issues: list[ImportIssue] = []
        added = 0
        with ix.writer_lock(self.data_dir), self.catalog.transaction() as db:
            for modality, enc in self._modalities():
                if enc is not None:
                    self.catalog.delete_vectors(db, modality=modality, fingerprint=enc.fingerprint)
            for key, image_id, path in tqdm(self.catalog.all_images(), desc="re-embed", unit="image",
                                            disable=not progress):
                try:
                    vec = self.image_encoder.embed([read_image(path)])[0]
                except ImageError as e:
                    issues.append(ImportIssue(source=path, line=0, message=f"image skipped: {e}"))
                    continue
                self.catalog.add_vector(db, key, modality=IMAGE, fingerprint=self.image_encoder.fingerprint,
                                        vector=vec, image_id=image_id)
                added += 1
            for p in self.catalog.products():
                self._embed_text(db, p.key, None)
        self.rebuild_indexes()
        return ImportReport(rows=self.catalog.count(), images_added=added, issues=tuple(issues),
                            catalog_version=self.catalog.version)

    def change_photos(self, change: Callable[[sqlite3.Connection], Iterable[int]]) -> int:
        """One write that adds or removes reference photos of existing products (learned photos,
        :mod:`edge.catalog.learning`); returns the new catalog version.

        ``change(db)`` runs inside the transaction and returns the keys of the products whose photos
        it changed; their image vectors are read back and swapped into the image index (the text
        indexes are only restamped: no text changed).
        """
        if self.image_encoder is None:
            raise InputError("changing photos needs the image encoder", hint="configure model.image_bundle")
        fp, batch = self.image_encoder.fingerprint, _Batch()
        with ix.writer_lock(self.data_dir), self._disk_guard("learned photos"):
            with self.catalog.transaction() as db:
                batch.remove = {int(k) for k in change(db)}
                batch.add[IMAGE] = [(key, np.frombuffer(blob, dtype=np.float32)) for key in sorted(batch.remove)
                                    for (blob,) in db.execute("SELECT data FROM vectors WHERE key = ? AND modality "
                                                              "= ? AND fingerprint = ? ORDER BY id", (key, IMAGE, fp))]
            self._publish(batch, only=IMAGE)
            ix.restamp(self.data_dir, self.catalog.version)
        self.store.reload()
        return self.catalog.version

    def _publish(self, batch: _Batch, *, only: str | None = None) -> None:
        """Apply a write's removals and additions to each index (or ``only`` one) and swap the new generation in.

        Removals need no encoder (``catalog remove`` runs without loading models); additions come
        only from a loaded encoder, whose fingerprint, dim and dtype must match the index.
        """
        for modality, enc in self._modalities():
            if only is not None and modality != only:
                continue
            adds = batch.add[modality]
            current = ix.open_for_write(self.data_dir, modality)
            if current is None:
                if not adds or enc is None:
                    continue
                meta = self._new_meta(modality, enc, np.stack([v for _, v in adds]))
                index: ix.Index = ix.new_usearch(meta)
            else:
                meta, index = current
                if enc is not None:
                    ix.check_compatible(meta, fingerprint=enc.fingerprint, ndim=enc.dim, dtype=self.dtype,
                                        where=self.data_dir)
            for key in batch.remove:
                if modality == IMAGE and key in batch.keep_images:
                    continue
                if index.contains(key):
                    index.remove(key)
            if adds:
                keys = np.fromiter((k for k, _ in adds), dtype=np.uint64, count=len(adds))
                vecs = ix.quantize(np.stack([v for _, v in adds]), dtype=meta.dtype, i8_scale=meta.i8_scale)
                index.add(keys, vecs, threads=self.threads)
            n_products = len(np.unique(np.asarray(index.keys))) if len(index) else 0
            ix.publish(self.data_dir, index, ix.IndexMeta.from_dict(
                {**meta.to_dict(), "catalog_version": self.catalog.version, "products": n_products}))

    def _new_meta(self, modality: str, enc: ImageEncoder | TextEncoder, sample: np.ndarray) -> ix.IndexMeta:
        scale = ix.choose_i8_scale(sample) if self.dtype == "i8" and len(sample) else 1.0
        if self.dtype == "i8" and len(sample) < FEW_VECTORS:
            scale = min(scale, math.sqrt(enc.dim) / 4)  # few vectors: a conservative, dimension-based scale
        return ix.IndexMeta(modality=modality, ndim=enc.dim, dtype=self.dtype, fingerprint=enc.fingerprint,
                            catalog_version=self.catalog.version, vectors=0, products=0, file="", i8_scale=scale,
                            expansion_search=self.expansion_search)

    def rebuild_one(self, modality: str, enc: ImageEncoder | TextEncoder) -> ix.IndexMeta:
        """Rebuild one index from the vectors stored in SQLite; the caller holds the writer lock
        (:mod:`edge.catalog.consistency` repairs an index that disagrees with the catalog this way)."""
        keys, vecs = self.catalog.vectors(modality, enc.fingerprint)
        meta = self._new_meta(modality, enc, vecs)
        index = ix.new_usearch(meta)
        if len(keys):
            index.add(keys, ix.quantize(vecs, dtype=self.dtype, i8_scale=meta.i8_scale), threads=self.threads)
        return ix.publish(self.data_dir, index, ix.IndexMeta.from_dict(
            {**meta.to_dict(), "products": len(np.unique(keys))}))

    @contextmanager
    def _disk_guard(self, what: str) -> Iterator[None]:
        """A write that fails because the disk is full becomes a :class:`CatalogError` saying so.

        Nothing is left half-done that a reader could see: SQLite rolled the transaction back, or
        it committed and the index generation was not swapped in — the catalog and the index then
        disagree by version, which :mod:`edge.catalog.consistency` repairs on the next reload or
        write once the disk has room; until then searches use the previous index.
        """
        try:
            yield
        except (sqlite3.Error, OSError, RuntimeError) as e:
            if not disk_full(e, self.data_dir):
                raise
            raise CatalogError(f"catalog {what} failed: the disk is full ({e})",
                               hint=f"free space on the disk of {self.data_dir} and retry; nothing half-written "
                               "is used (the index is repaired from the catalog on the next reload)") from e

    def _save_array(self, sku: str, i: int, image: np.ndarray) -> Path:
        folder = self.data_dir / "images" / hashlib.sha1(sku.encode()).hexdigest()[:16]
        path = folder / f"{hashlib.sha1(image.tobytes()).hexdigest()[:16]}.jpg"
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, ENROLL_JPEG_QUALITY])
        if not ok:
            raise ImageError(f"image {i} for sku {sku!r} could not be encoded as JPEG",
                             hint="pass a BGR uint8 array of shape (H, W, 3)")
        with self._disk_guard(f"saving image {i} of {sku!r}"):
            folder.mkdir(parents=True, exist_ok=True)
            try:
                path.write_bytes(jpeg.tobytes())
            except OSError:
                path.unlink(missing_ok=True)  # no half photo left behind
                raise
        return path


def text_to_embed(name: str, description: str) -> str:
    """The text a product's text embedding is computed from."""
    return f"{name}. {description}".strip() if description else name
