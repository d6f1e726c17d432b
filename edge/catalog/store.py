"""The catalog façade the runtime, the CLI and MQTT commands use: search, thresholds, reload.

A :class:`Store` joins the SQLite :class:`~edge.catalog.db.Catalog`, one USearch index per modality
(:mod:`edge.catalog.index`) and the encoders (any objects satisfying :mod:`edge.models.encoders.base`).
It reads; writes go through its :attr:`Store.writer` (:mod:`edge.catalog.writer`), which swaps in
a new index generation atomically. Searches keep using the generation they opened until
:meth:`Store.reload`, so reads never block on writes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.catalog import index as ix
from edge.catalog.consistency import IndexRepairs, open_consistent, same_generation
from edge.catalog.db import Catalog
from edge.catalog.importers.tables import ImportIssue, ProductRecord
from edge.catalog.ranking import DEFAULT_K, RRF_K, Aggregate, Ranked, aggregate_hits, rrf
from edge.catalog.text_search import Ranking, ShopperSearch
from edge.catalog.writer import IMAGE, TEXT, VIEWS, CatalogWriter, ImportReport
from edge.core.config import CatalogSettings
from edge.core.errors import InputError
from edge.core.types import Calibration, Candidate, Thresholds, resolve_thresholds
from edge.models.encoders.base import ImageEncoder, TextEncoder

log = logging.getLogger("storelens.store")
_DEFAULTS = CatalogSettings()



class Store:
    """Products, their vectors and indexes in ``data_dir``; see the module docstring."""

    def __init__(self, *, data_dir: Path, image_encoder: ImageEncoder | None = None,
                 text_encoder: TextEncoder | None = None, dtype: str = _DEFAULTS.index_dtype, view: bool = False,
                 threshold: float | None = None, margin: float | None = None,
                 aggregate: Aggregate = _DEFAULTS.image_aggregate, expansion_search: int = _DEFAULTS.expansion_search,
                 threads: int = 1, text_search: str = _DEFAULTS.text_search, synonyms: Path | None = None,
                 default_synonyms: bool = True, open_indexes: bool = True) -> None:
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
        self.repairs = IndexRepairs()  # indexes rebuilt because they disagreed with the catalog
        self._indexes: dict[str, ix.VectorIndex | None] = {IMAGE: None, TEXT: None, VIEWS: None}
        self._writer: CatalogWriter | None = None
        # shopper text search (docs/search.md); None: the plain hybrid of FTS5 BM25 and one text vector
        self.shopper = (ShopperSearch(self.catalog, synonyms_file=synonyms, default_synonyms=default_synonyms)
                        if text_search == "shopper" else None)
        if open_indexes:  # False: only to rebuild indexes that no longer fit the encoder or dtype
            self.reload()

    @classmethod
    def from_settings(cls, settings: Any, *, image_encoder: ImageEncoder | None,
                      text_encoder: TextEncoder | None) -> Store:
        """Open the store a :class:`edge.core.config.Settings` describes (catalog and decision sections)."""
        c, d = settings.catalog, settings.decision
        return cls(data_dir=c.data_dir, image_encoder=image_encoder, text_encoder=text_encoder,
                   dtype=c.index_dtype, view=c.view, threshold=d.threshold, margin=d.margin,
                   aggregate=c.image_aggregate, expansion_search=c.expansion_search, text_search=c.text_search,
                   synonyms=c.synonyms, default_synonyms=c.default_synonyms)

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

    def reopen_indexes(self) -> None:
        """Forget the open generations and open the current ones (after a rebuild changed their build)."""
        self._indexes = {IMAGE: None, TEXT: None, VIEWS: None}
        self.reload()

    def reload(self) -> bool:
        """Open the newest index generations (e.g. after another process swapped them) and re-read the
        synonym files when one changed on disk; True if anything changed."""
        changed = self.shopper.reload() if self.shopper is not None else False
        for modality, enc in ((IMAGE, self.image_encoder), (TEXT, self.text_encoder), (VIEWS, self.text_encoder)):
            if enc is None:
                continue
            cur = self._indexes[modality]
            if cur is not None and same_generation(self, modality, cur):
                continue
            new = open_consistent(self, modality, enc)  # checked against the catalog; rebuilt if it diverged
            self._indexes[modality] = new  # one reference swap: searches in flight keep the old object
            changed = True
        return changed

    # ---- writes (edge.catalog.writer) ----------------------------------------------------

    @property
    def writer(self) -> CatalogWriter:
        """Enroll, import, remove and reindex this store's catalog (see :mod:`edge.catalog.writer`)."""
        if self._writer is None:
            self._writer = CatalogWriter(self)
        return self._writer

    def enroll(self, sku: str, **kw: Any) -> ImportReport:
        """:meth:`CatalogWriter.enroll <edge.catalog.writer.CatalogWriter.enroll>` (also the runtime's cmd/enroll)."""
        return self.writer.enroll(sku, **kw)

    def import_records(self, records: Iterable[ProductRecord | ImportIssue], **kw: Any) -> ImportReport:
        return self.writer.import_records(records, **kw)

    def remove(self, sku: str) -> bool:
        return self.writer.remove(sku)

    # ---- search -------------------------------------------------------------------------

    def match_vectors(self, embs: np.ndarray, k: int) -> list[list[Candidate]]:
        """Batched image matching of already embedded crops: per row, up to ``k`` products best first."""
        return [[r.candidate() for r in row] for row in self._image_ranked(embs, k)]

    def search_image(self, images: Sequence[np.ndarray], k: int = DEFAULT_K) -> list[list[Ranked]]:
        """Embed BGR images and rank products for each."""
        if self.image_encoder is None:
            raise InputError("no image encoder is loaded", hint="configure model.image_bundle")
        return self._image_ranked(self.image_encoder.embed(list(images)), k)

    def search_text(self, query: str, k: int = DEFAULT_K) -> list[Ranked]:
        """Text search: shopper search (:mod:`edge.catalog.text_search`), or the plain hybrid of FTS5
        BM25 and the text embedding, fused by reciprocal rank fusion."""
        rankings, weights, rrf_k = self._text_rankings(query, k)
        return self._ranked(rrf(rankings, weights=weights, k=k, rrf_k=rrf_k))

    def search(self, *, image: np.ndarray | None = None, text: str | None = None, k: int = DEFAULT_K) -> list[Ranked]:
        """Image, text, or both fused (RRF over the image ranking, BM25 and text embedding)."""
        if image is None and not text:
            raise InputError("nothing to search for", hint="give an image, a text query, or both")
        rankings: dict[str, Ranking] = {}
        weights: dict[str, float] = {}
        rrf_k = RRF_K
        if image is not None:
            if self.image_encoder is None:
                raise InputError("no image encoder is loaded", hint="configure model.image_bundle")
            rankings[IMAGE] = self._image_keys(self.image_encoder.embed([image]), 2 * k)[0]
        if text:
            text_rankings, weights, rrf_k = self._text_rankings(text, k)
            rankings.update(text_rankings)
        if len(rankings) == 1 and IMAGE in rankings:  # image only: keep cosine scores, not RRF ones
            return self._ranked([(key, s, {IMAGE: s}) for key, s in rankings[IMAGE][:k]])
        return self._ranked(rrf(rankings, weights=weights, k=k, rrf_k=rrf_k))

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

    def _text_rankings(self, query: str, k: int) -> tuple[dict[str, Ranking], dict[str, float], int]:
        """The rankings of a text query, their RRF weights and RRF constant (shopper search unless the
        store is plain or the query is exactly a product's name: then as before, all weights 1, k=60)."""
        shopper = self.shopper
        if shopper is None or shopper.exact_name(query) is not None:
            return self._plain_rankings(query, k), {}, RRF_K
        plan = shopper.plan(query)
        nearest = self._nearest_text if self.text_encoder is not None else None
        rankings, weights = shopper.rankings(plan, nearest=nearest, pool=max(3 * k, shopper.weights.pool))
        return rankings, weights, shopper.weights.rrf_k

    def _plain_rankings(self, query: str, k: int) -> dict[str, Ranking]:
        pool = max(3 * k, 20)
        out = {"bm25": self.catalog.fts_search(query, pool)}
        idx = self._indexes[TEXT]
        if self.text_encoder is not None and idx is not None and idx.size:
            out[TEXT] = aggregate_hits(idx.search(self.text_encoder.embed([query]), pool, threads=self.threads),
                                       k=pool)[0]
        return out

    def _nearest_text(self, text: str, pool: int) -> Ranking:
        """Products nearest to a text: their best cosine over the view vectors (which include the name +
        description one); the ``text`` index alone for a catalog embedded before views existed."""
        idx = self._indexes[VIEWS] or self._indexes[TEXT]
        if self.text_encoder is None or idx is None or idx.size == 0:
            return []
        per_product = max(1, math.ceil(idx.meta.vectors / max(1, idx.meta.products)))
        hits = idx.search(self.text_encoder.embed([text]), pool * per_product, threads=self.threads)
        return aggregate_hits(hits, k=pool)[0]

    def _ranked(self, rows: Sequence[tuple[int, float, Mapping[str, float]]]) -> list[Ranked]:
        products = self.catalog.by_keys(key for key, _, _ in rows)
        # A key missing from the catalog was removed after this index generation was opened: skip it.
        return [Ranked(sku=products[key].sku, name=products[key].name, score=float(s), scores=dict(parts))
                for key, s, parts in rows if key in products]

