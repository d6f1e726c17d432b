"""``storelens catalog build``: a product table's photos embedded (Ray or one process) into a catalog snapshot.

Steps: read the table (the importers' formats), keep the products of the store's assortment
(or all: chain-wide), look every photo up in the build's cache (:mod:`edge.fleet.cache`),
embed only the others (:mod:`edge.fleet.embed`, results stored batch by batch: a crashed build
resumes where it stopped), write a fresh catalog from the vectors (products, texts, photos,
text vectors; then every index by the writer's :meth:`~edge.catalog.writer.CatalogWriter.rebuild_indexes`)
and copy it into a content-addressed snapshot (:mod:`edge.catalog.snapshot`). Unreadable
photos are listed and counted; a product none of whose photos could be read is left out, as
``storelens catalog import`` does.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.catalog.db import Product
from edge.catalog.importers.tables import ImportIssue, ProductRecord
from edge.catalog.snapshot import write_snapshot
from edge.catalog.store import Store
from edge.core.config import Settings
from edge.core.errors import InputError
from edge.fleet.cache import CachedTextEncoder, EmbeddingCache, photo_key
from edge.fleet.embed import embed_local, embed_ray
from edge.models.encoders.base import ImageEncoder, TextEncoder

Engine = Literal["ray", "local"]
CACHE_FILE = "embeddings.db"


@dataclass(frozen=True, kw_only=True)
class Assortment:
    """The skus one store sells (from a file), or None for a chain-wide snapshot."""

    store: str
    skus: frozenset[str]
    source: str
    sha256: str

    @classmethod
    def read(cls, path: Path, *, store: str) -> Assortment:
        """One sku a line (``#`` comments), or a CSV whose header has a ``sku`` column."""
        if not path.is_file():
            raise InputError(f"assortment file not found: {path}", hint="one sku a line, or a CSV with a sku column")
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
        first = text.splitlines()[0] if text.strip() else ""
        if "," in first and "sku" in [c.strip().lower() for c in first.split(",")]:
            rows = csv.DictReader(io.StringIO(text))
            skus = {str({k.strip().lower(): v for k, v in r.items()}.get("sku") or "").strip() for r in rows}
        else:
            skus = {ln.split("#", 1)[0].strip() for ln in text.splitlines()}
        return cls(store=store, skus=frozenset(s for s in skus if s), source=str(path),
                   sha256=hashlib.sha256(raw).hexdigest())

    def to_dict(self, missing: int) -> dict[str, Any]:
        return {"store": self.store, "file": self.source, "sha256": self.sha256, "skus": len(self.skus),
                "missing_from_table": missing}


@dataclass(kw_only=True)
class BuildReport:
    """What a build did: the snapshot, counts, unreadable photos and skipped rows, and its speed."""

    snapshot: str = ""
    snapshot_id: str = ""
    catalog_version: int = 0
    scope: str = "chain"
    engine: str = "ray"
    workers: int = 1
    products: int = 0
    photos: int = 0
    embedded: int = 0  # photos embedded by this run
    from_cache: int = 0  # photos an earlier run had embedded
    texts_embedded: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # rows and products left out, with why
    embed_s: float = 0.0  # start of the engine (Ray and its actors) to the last photo
    first_batch_s: float = 0.0  # start to the first batch back: the engine's start-up
    first_batch: int = 0
    total_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return round(self.embedded / self.embed_s, 2) if self.embed_s > 0 else 0.0

    @property
    def steady_images_per_s(self) -> float:
        """After the first batch came back (start-up excluded)."""
        span = self.embed_s - self.first_batch_s
        return round((self.embedded - self.first_batch) / span, 2) if span > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unreadable"] = [{"path": p, "error": e} for p, e in self.unreadable]
        return {**d, "unreadable_count": len(self.unreadable), "skipped_count": len(self.skipped),
                "images_per_s": self.images_per_s, "steady_images_per_s": self.steady_images_per_s}


class StoredVectors:
    """The assembly store's image "encoder": its fingerprint and dim only; vectors come from the cache."""

    def __init__(self, *, fingerprint: str, dim: int) -> None:
        self._fp, self._dim = fingerprint, dim

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return self._fp

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        raise InputError("a catalog build embeds photos through its engine, not through the assembly store")


def select(records: Sequence[ProductRecord | ImportIssue], assortment: Assortment | None,
           report: BuildReport) -> tuple[list[ProductRecord], int]:
    """The products to build (the assortment's, else all) and how many assortment skus the table lacks."""
    kept = []
    for rec in records:
        if isinstance(rec, ImportIssue):
            report.skipped.append(str(rec))
        elif assortment is None or rec.sku in assortment.skus:
            kept.append(rec)
    missing = len(assortment.skus - {r.sku for r in kept}) if assortment else 0
    return kept, missing


def build_snapshot(records: Sequence[ProductRecord | ImportIssue], *, settings: Settings, out: Path, workdir: Path,
                   image_encoder: ImageEncoder, text_encoder: TextEncoder | None, engine: Engine = "ray",
                   assortment: Assortment | None = None, progress: bool = True) -> BuildReport:
    """Build one snapshot (see the module docstring); ``image_encoder`` names the bundle the workers load."""
    t0 = time.perf_counter()
    fleet = settings.fleet
    report = BuildReport(scope=assortment.store if assortment else "chain", engine=engine,
                         workers=fleet.workers if engine == "ray" else 1)
    products, missing = select(records, assortment, report)
    cache = EmbeddingCache(workdir / CACHE_FILE)
    try:
        vectors = _embed_missing(products, cache=cache, settings=settings, engine=engine, report=report,
                                 fingerprint=image_encoder.fingerprint, encoder=image_encoder, progress=progress)
        stage = workdir / f"stage-{report.scope}"
        shutil.rmtree(stage, ignore_errors=True)
        text = CachedTextEncoder(text_encoder, cache) if text_encoder is not None else None
        store = Store(data_dir=stage, image_encoder=StoredVectors(fingerprint=image_encoder.fingerprint,
                                                                  dim=image_encoder.dim),
                      text_encoder=text, dtype=settings.catalog.index_dtype, open_indexes=False,
                      expansion_search=settings.catalog.expansion_search)  # devices search with the builder's
        try:
            _assemble(store, products, vectors, report)
            store.catalog.set_meta("version", str(next_version(out)))  # before the indexes record it
            store.writer.rebuild_indexes()
            report.texts_embedded = text.embedded if text is not None else 0
            folder, manifest = write_snapshot(
                stage, out, bundle=image_encoder.fingerprint, text_bundle=text.fingerprint if text else None,
                dtype=settings.catalog.index_dtype,
                counts={"products": report.products, "photos": report.photos, "unreadable": len(report.unreadable),
                        "skipped": len(report.skipped)},
                assortment=assortment.to_dict(missing) if assortment else None)
        finally:
            store.close()
    finally:
        cache.close()
    report.snapshot, report.snapshot_id, report.catalog_version = str(folder), manifest.id, manifest.catalog_version
    report.total_s = round(time.perf_counter() - t0, 2)
    (out / f"{manifest.id}.build.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    return report


def next_version(out: Path) -> int:
    """One more than the newest snapshot in ``out``: versions grow across builds (each starts a fresh catalog)."""
    versions = [0]
    for manifest in out.glob("*/snapshot.json"):
        try:
            versions.append(int(json.loads(manifest.read_text(encoding="utf-8"))["catalog_version"]))
        except (ValueError, KeyError, TypeError, OSError):
            continue
    return max(versions) + 1


def _embed_missing(products: Sequence[ProductRecord], *, cache: EmbeddingCache, settings: Settings, engine: Engine,
                   report: BuildReport, fingerprint: str, encoder: ImageEncoder,
                   progress: bool) -> dict[str, np.ndarray]:
    """path -> vector of every readable photo: from the cache, the rest embedded now (and cached)."""
    from tqdm import tqdm

    keys: dict[str, str] = {}
    for rec in products:
        for p in rec.images:
            if (k := photo_key(p)) is None:
                report.unreadable.append((str(p), "file not found or not readable"))
            else:
                keys[str(p)] = k
    cached = cache.get_many(fingerprint, list(keys.values()))
    vectors = {p: cached[k] for p, k in keys.items() if k in cached}
    todo = sorted(p for p in keys if p not in vectors)
    report.from_cache = len(vectors)
    bar = tqdm(total=len(todo), desc=f"embed ({engine})", unit="photo", disable=not progress)

    def on_batch(paths: Sequence[str], vecs: np.ndarray, errors: Sequence[str]) -> None:
        good = [(p, v) for p, v, e in zip(paths, vecs, errors, strict=True) if not e]
        cache.put_many(fingerprint, [(keys[p], v) for p, v in good])
        vectors.update(good)
        report.unreadable.extend((p, e) for p, e in zip(paths, errors, strict=True) if e)
        report.embedded += len(good)
        if not report.first_batch_s:
            report.first_batch_s, report.first_batch = round(time.perf_counter() - t, 3), len(paths)
        bar.update(len(paths))

    t = time.perf_counter()
    f = settings.fleet
    try:
        if engine == "ray":
            embed_ray(todo, model=settings.model, workers=f.workers, batch_size=f.batch_size, on_batch=on_batch,
                      address=f.ray_address)
        else:
            embed_local(todo, model=settings.model, batch_size=f.batch_size, on_batch=on_batch, encoder=encoder)
    finally:
        bar.close()
        report.embed_s = round(time.perf_counter() - t, 3)
    return vectors


def _assemble(store: Store, products: Sequence[ProductRecord], vectors: dict[str, np.ndarray],
              report: BuildReport) -> None:
    """Products, their texts, photos and photo vectors in one transaction, then each product's text vectors."""
    catalog, writer = store.catalog, store.writer
    fp = store.image_encoder.fingerprint if store.image_encoder else ""
    with catalog.transaction() as db:
        for rec in products:
            photos = [p for p in rec.images if str(p) in vectors]
            if rec.images and not photos:
                report.skipped.append(f"{rec.source}:{rec.line}: no readable image for sku {rec.sku!r}")
                continue
            key = catalog.upsert_product(db, Product(key=0, **rec.fields()))
            for source, text in rec.extra_text.items():
                catalog.set_text(db, key, source, text)
            for p in photos:
                image_id = catalog.add_image(db, key, str(p))
                catalog.add_vector(db, key, modality="image", fingerprint=fp, vector=vectors[str(p)],
                                   image_id=image_id)
            # the writer's own text embedding (name + description and the text views), so snapshot and import agree
            writer._embed_text(db, key, None)
            report.products += 1
            report.photos += len(photos)
