"""The catalog façade the runtime, the CLI and MQTT commands use: enroll, remove, search, reload.

A :class:`Store` joins the SQLite :class:`~edge.catalog.db.Catalog`, one USearch index per modality
(:mod:`edge.catalog.index`) and the encoders (any objects satisfying :mod:`edge.models.encoders.base`).

Writes (enroll, remove, import) take the catalog's writer lock, commit SQLite, then write the
next index generation beside the current one and swap it in atomically; searches in other
threads or processes keep using the generation they opened until they :meth:`Store.reload`.
Reads never block on writes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.catalog import index as ix
from edge.catalog.db import Catalog, Product
from edge.catalog.importers.tables import ImportIssue, ProductRecord
from edge.catalog.ranking import Aggregate, Ranked, aggregate_hits, rrf
from edge.core.errors import CatalogError, ImageError, InputError
from edge.core.types import Calibration, Candidate, Thresholds, resolve_thresholds
from edge.models.encoders.base import ImageEncoder, TextEncoder
from edge.models.preprocess import read_image

log = logging.getLogger("storelens.store")

IMAGE, TEXT = "image", "text"


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
    add: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=lambda: {IMAGE: [], TEXT: []})


class Store:
    """Products, their vectors and indexes in ``data_dir``; see the module docstring."""

    def __init__(self, *, data_dir: Path, image_encoder: ImageEncoder | None = None,
                 text_encoder: TextEncoder | None = None, dtype: str = "i8", view: bool = False,
                 threshold: float | None = None, margin: float | None = None, aggregate: Aggregate = "mean",
                 expansion_search: int = ix.DEFAULT_EXPANSION_SEARCH, threads: int = 1,
                 open_indexes: bool = True) -> None:
        if dtype not in ix.DTYPES:
            raise InputError(f"index dtype {dtype!r} is not one of {ix.DTYPES}", hint="set catalog.index_dtype")
        self.data_dir = Path(data_dir)
        self.catalog = Catalog(self.data_dir / "catalog.db")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.dtype = dtype
        self.view = view
        self.aggregate: Aggregate = aggregate
        self.expansion_search = expansion_search
        self.threads = threads
        self._config_thresholds = (threshold, margin)
        self._warned_stale = False
        self._indexes: dict[str, ix.VectorIndex | None] = {IMAGE: None, TEXT: None}
        if open_indexes:  # False: only to rebuild indexes that no longer fit the encoder or dtype
            self.reload()

    @classmethod
    def from_settings(cls, settings: Any, *, image_encoder: ImageEncoder | None,
                      text_encoder: TextEncoder | None) -> Store:
        """Open the store a :class:`edge.core.config.Settings` describes (catalog and decision sections)."""
        c, d = settings.catalog, settings.decision
        return cls(data_dir=c.data_dir, image_encoder=image_encoder, text_encoder=text_encoder,
                   dtype=c.index_dtype, view=c.view, threshold=d.threshold, margin=d.margin,
                   aggregate=c.image_aggregate, expansion_search=c.expansion_search)

    def close(self) -> None:
        self.catalog.close()

    # ---- state --------------------------------------------------------------------------

    @property
    def catalog_version(self) -> int:
        return self.catalog.version

    @property
    def thresholds(self) -> Thresholds:
        """Config values when set, else the stored calibration, else none (everything known).

        A calibration measured with another image encoder is not used (its scores mean something
        else); that is logged once, and ``source`` says ``stale-calibration``.
        """
        cal = self.calibration
        stored = cal.thresholds() if cal is not None else None
        if cal is not None and self.image_encoder is not None and cal.fingerprint != self.image_encoder.fingerprint:
            if not self._warned_stale:  # once per store, not once per decision
                log.warning("stored calibration was made with encoder %s, not %s: ignored; run `storelens calibrate`",
                            cal.fingerprint, self.image_encoder.fingerprint)
                self._warned_stale = True
            stored = Thresholds(source="stale-calibration")
        return resolve_thresholds(*self._config_thresholds, stored)

    @property
    def calibration(self) -> Calibration | None:
        raw = self.catalog.get_meta("calibration")
        return Calibration.from_json(raw) if raw else None

    def save_calibration(self, cal: Calibration) -> None:
        self.catalog.set_meta("calibration", cal.to_json())

    def index_meta(self, modality: str) -> ix.IndexMeta | None:
        idx = self._indexes.get(modality)
        return idx.meta if idx else None

    def reload(self) -> bool:
        """Open the newest index generations (e.g. after another process swapped them); True if any changed."""
        changed = False
        for modality, enc in ((IMAGE, self.image_encoder), (TEXT, self.text_encoder)):
            if enc is None:
                continue
            cur = self._indexes[modality]
            meta = ix.read_meta(self.data_dir, modality)
            if meta is not None and cur is not None and meta.file == cur.meta.file:
                continue
            new = ix.VectorIndex.open(self.data_dir, modality, fingerprint=enc.fingerprint, ndim=enc.dim,
                                      dtype=self.dtype, view=self.view)
            self._indexes[modality] = new  # one reference swap: searches in flight keep the old object
            changed = True
        return changed

    # ---- writes -------------------------------------------------------------------------

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
        with ix.writer_lock(self.data_dir):
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
        self.reload()
        report = ImportReport(rows=counts["rows"], products_added=counts["added"],
                              products_replaced=counts["replaced"], images_added=counts["images"],
                              rows_skipped=counts["skipped"], issues=tuple(issues),
                              catalog_version=self.catalog_version)
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
        key = self.catalog.upsert_product(db, Product(
            key=0, sku=rec.sku, name=rec.name, description=rec.description, price=rec.price,
            location=rec.location, barcode=rec.barcode, attributes=rec.attributes))
        if existing is not None:
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
        if self.text_encoder is not None:
            v = self.text_encoder.embed([product_text(rec.name, rec.description)])[0]
            self.catalog.add_vector(db, key, modality=TEXT, fingerprint=self.text_encoder.fingerprint, vector=v)
            batch.add[TEXT].append((key, v))
        return "replaced" if existing is not None else "added"

    def remove(self, sku: str) -> bool:
        """Remove a product and its vectors; False when the sku is not in the catalog."""
        batch = _Batch()
        with ix.writer_lock(self.data_dir):
            if self.catalog.get(sku) is None:
                return False  # nothing changes, so the catalog version does not move either
            with self.catalog.transaction() as db:
                key = self.catalog.delete_product(db, sku)
            if key is None:
                return False
            batch.remove.add(key)
            self._publish(batch)
        self.reload()
        return True

    def set_product_text(self, sku: str, source: str, text: str | None) -> None:
        """Add extra searchable text of one ``source`` (e.g. ``ocr``) to a product (None clears it)."""
        product = self.catalog.get(sku)
        if product is None:
            raise InputError(f"sku {sku!r} is not in the catalog", hint="enroll it first")
        with ix.writer_lock(self.data_dir), self.catalog.transaction() as db:
            self.catalog.set_text(db, product.key, source, text)

    def rebuild_indexes(self) -> None:
        """Rebuild every index from the vectors stored in SQLite (e.g. after changing catalog.index_dtype)."""
        with ix.writer_lock(self.data_dir):
            for modality, enc in ((IMAGE, self.image_encoder), (TEXT, self.text_encoder)):
                if enc is None:
                    continue
                keys, vecs = self.catalog.vectors(modality, enc.fingerprint)
                meta = self._new_meta(modality, enc, vecs)
                index = ix.new_usearch(meta)
                if len(keys):
                    index.add(keys, ix.quantize(vecs, dtype=self.dtype, i8_scale=meta.i8_scale), threads=self.threads)
                ix.publish(self.data_dir, index, ix.IndexMeta.from_dict(
                    {**meta.to_dict(), "products": len(np.unique(keys))}))
            self._indexes = {IMAGE: None, TEXT: None}
        self.reload()

    def reembed(self, *, progress: bool = True) -> ImportReport:
        """Re-embed every stored reference image and product text with the loaded encoders, then rebuild
        the indexes (after an encoder bundle change). Unreadable images are reported and skipped."""
        from tqdm import tqdm

        if self.image_encoder is None or self.text_encoder is None:
            raise InputError("re-embedding needs both encoders", hint="configure model.image_bundle and text_bundle")
        issues: list[ImportIssue] = []
        added = 0
        with ix.writer_lock(self.data_dir), self.catalog.transaction() as db:
            for modality, enc in ((IMAGE, self.image_encoder), (TEXT, self.text_encoder)):
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
                vec = self.text_encoder.embed([product_text(p.name, p.description)])[0]
                self.catalog.add_vector(db, p.key, modality=TEXT, fingerprint=self.text_encoder.fingerprint,
                                        vector=vec)
        self.rebuild_indexes()
        return ImportReport(rows=self.catalog.count(), images_added=added, issues=tuple(issues),
                            catalog_version=self.catalog_version)

    def _publish(self, batch: _Batch) -> None:
        """Apply a write's removals and additions to each index and swap the new generation in.

        Removals need no encoder (``catalog remove`` runs without loading models); additions come
        only from a loaded encoder, whose fingerprint, dim and dtype must match the index.
        """
        for modality, enc in ((IMAGE, self.image_encoder), (TEXT, self.text_encoder)):
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
        if self.dtype == "i8" and len(sample) < 1000:
            scale = min(scale, math.sqrt(enc.dim) / 4)  # few vectors: a conservative, dimension-based scale
        return ix.IndexMeta(modality=modality, ndim=enc.dim, dtype=self.dtype, fingerprint=enc.fingerprint,
                            catalog_version=self.catalog.version, vectors=0, products=0, file="", i8_scale=scale,
                            expansion_search=self.expansion_search)

    def _save_array(self, sku: str, i: int, image: np.ndarray) -> Path:
        import hashlib

        import cv2

        folder = self.data_dir / "images" / hashlib.sha1(sku.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha1(image.tobytes()).hexdigest()[:16]}.jpg"
        if not cv2.imwrite(str(path), image):
            raise ImageError(f"image {i} for sku {sku!r} could not be saved as JPEG",
                             hint="pass a BGR uint8 array of shape (H, W, 3)")
        return path

    # ---- search -------------------------------------------------------------------------

    def match_vectors(self, embs: np.ndarray, k: int) -> list[list[Candidate]]:
        """Batched image matching of already embedded crops: per row, up to ``k`` products best first."""
        return [[r.candidate() for r in row] for row in self._image_ranked(embs, k)]

    def search_image(self, images: Sequence[np.ndarray], k: int = 5) -> list[list[Ranked]]:
        """Embed BGR images and rank products for each."""
        if self.image_encoder is None:
            raise InputError("no image encoder is loaded", hint="configure model.image_bundle")
        return self._image_ranked(self.image_encoder.embed(list(images)), k)

    def search_text(self, query: str, k: int = 5) -> list[Ranked]:
        """Hybrid text search: FTS5 BM25 and text-embedding rankings fused by reciprocal rank fusion."""
        return self._fuse(self._text_rankings(query, k), k)

    def search(self, *, image: np.ndarray | None = None, text: str | None = None, k: int = 5) -> list[Ranked]:
        """Image, text, or both fused (RRF over the image ranking, BM25 and text embedding)."""
        if image is None and not text:
            raise InputError("nothing to search for", hint="give an image, a text query, or both")
        rankings: dict[str, list[tuple[int, float]]] = {}
        if image is not None:
            if self.image_encoder is None:
                raise InputError("no image encoder is loaded", hint="configure model.image_bundle")
            rankings[IMAGE] = self._image_keys(self.image_encoder.embed([image]), 2 * k)[0]
        if text:
            rankings.update(self._text_rankings(text, k))
        if len(rankings) == 1 and IMAGE in rankings:  # image only: keep cosine scores, not RRF ones
            return self._ranked([(key, s, {IMAGE: s}) for key, s in rankings[IMAGE][:k]])
        return self._fuse(rankings, k)

    def product_embeddings(self, modality: str = IMAGE) -> dict[str, np.ndarray]:
        """sku -> unit mean of that product's vectors for ``modality`` under the loaded encoder."""
        enc = self.image_encoder if modality == IMAGE else self.text_encoder
        if enc is None:
            raise InputError(f"no {modality} encoder is loaded", hint=f"configure model.{modality}_bundle")
        return self.catalog.product_vectors(modality, enc.fingerprint)

    def _image_keys(self, embs: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        idx = self._indexes[IMAGE]
        n = len(np.atleast_2d(embs)) if np.size(embs) else 0
        if idx is None or idx.size == 0 or k <= 0:
            return [[] for _ in range(n)]
        per_product = max(1, math.ceil(idx.meta.vectors / max(1, idx.meta.products)))
        hits = idx.search(embs, k * max(4, 2 * per_product), threads=self.threads)
        per_key = None
        if self.aggregate == "mean":  # only the valid columns of each row (the rest is padding)
            valid = [hits.keys[i, : int(c)] for i, c in enumerate(hits.counts)]
            per_key = idx.vectors_per_key(np.concatenate(valid) if valid else np.zeros(0, np.uint64))
        return aggregate_hits(hits, k=k, rule=self.aggregate, vectors_per_key=per_key)

    def _image_ranked(self, embs: np.ndarray, k: int) -> list[list[Ranked]]:
        return [self._ranked([(key, s, {IMAGE: s}) for key, s in row]) for row in self._image_keys(embs, k)]

    def _text_rankings(self, query: str, k: int) -> dict[str, list[tuple[int, float]]]:
        pool = max(3 * k, 20)
        out = {"bm25": self.catalog.fts_search(query, pool)}
        idx = self._indexes[TEXT]
        if self.text_encoder is not None and idx is not None and idx.size:
            out[TEXT] = aggregate_hits(idx.search(self.text_encoder.embed([query]), pool, threads=self.threads),
                                       k=pool)[0]
        return out

    def _fuse(self, rankings: Mapping[str, Sequence[tuple[int, float]]], k: int) -> list[Ranked]:
        return self._ranked(rrf(rankings, k=k))

    def _ranked(self, rows: Sequence[tuple[int, float, Mapping[str, float]]]) -> list[Ranked]:
        products = self.catalog.by_keys(key for key, _, _ in rows)
        # A key missing from the catalog was removed after this index generation was opened: skip it.
        return [Ranked(sku=products[key].sku, name=products[key].name, score=float(s), scores=dict(parts))
                for key, s, parts in rows if key in products]


def product_text(name: str, description: str) -> str:
    """The text a product's text embedding is computed from."""
    return f"{name}. {description}".strip() if description else name
