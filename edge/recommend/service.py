"""Recommendations at the kiosk: what shoppers buy together, and similar products.

**Bought together** is ranked from the decayed basket statistics of :mod:`edge.recommend.baskets`
(``G = X^T X``: item counts on the diagonal, pair counts off it). Three documented scores:

- ``ease`` (default up to ``ease_max_items`` products): the closed-form item-item linear model
  EASE (Steck, 2019): ``P = (G + λI)^-1``, ``B_ij = -P_ij / P_jj``, ``B_jj = 0``. A basket's
  score for ``j`` is ``Σ_{i in basket} B_ij``. It needs nothing but ``G``, so it is solved from the
  counts already kept, whenever they changed (at most every ``refresh_s``). Unlike raw counts it
  explains staples away (they co-occur with everything), which is what lifts the long tail.
- ``pmi`` (large catalogs, where an n×n inverse is too dear): pointwise mutual information with
  shrinkage for rare pairs, ``log(C_ij·N / (C_i·C_j)) · C_ij / (C_ij + β)``.
- ``cooccurrence``: raw pair counts ``C_ij`` (the baseline the benchmark compares against).

Each product keeps its top ``neighbours`` scores; a basket's scores are the sum of its products'
rows, clipped at 0, plus a small popularity prior ``γ · support_j / max(support)`` (tuned on
validation baskets: it lets a staple outrank a weak association, which is most of what raw
co-occurrence gets right, while EASE keeps the long tail). Products with a positive
association are "together", the others "popular"; when there are no baskets at all, similar
products fill the list (cold start). Each result says which of those it came from.

**Similar** is item-to-item cosine on fused product vectors (image and text, weighted), leaving
out the product itself and its near-duplicates, optionally restricted to products in stock,
of the same category, or within a price band.

:class:`Recommender` serves both with a per-request cache that is dropped whenever the model
is rebuilt or the products change, and offers the MQTT handlers (``events/basket``,
``cmd/recommend``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edge.core.config import RecommendSettings
from edge.core.errors import CommandError, InputError
from edge.recommend.baskets import BasketStore, Cooccurrence, IngestResult

Kind = Literal["together", "similar", "blend"]
Method = Literal["auto", "ease", "pmi", "cooccurrence"]
Source = Literal["together", "popular", "similar"]
KINDS: tuple[str, ...] = ("together", "similar", "blend")

log = logging.getLogger("storelens.recommend")


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One suggested product and why: ``source`` is together | popular | similar."""

    sku: str
    name: str
    score: float
    source: Source

    def to_dict(self) -> dict[str, object]:
        return {"sku": self.sku, "name": self.name, "score": round(float(self.score), 4), "source": self.source}


# -- bought together -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AssociationModel:
    """Fitted item-item scores: per product its ``neighbours`` best (index, score), -1 padded."""

    method: str
    skus: tuple[str, ...]
    index: dict[str, int]
    support: np.ndarray  # (n,) decayed baskets holding each product
    by_popularity: np.ndarray  # product indices, most bought first
    nbr_idx: np.ndarray  # (n, M) int64
    nbr_score: np.ndarray  # (n, M) float32
    version: int
    prior: np.ndarray  # (n,) popularity_prior * support / max(support), added to association scores

    @classmethod
    def fit(cls, co: Cooccurrence, *, method: Method = "auto", ease_lambda: float = 100.0, shrinkage: float = 20.0,
            ease_max_items: int = 3000, neighbours: int = 200, popularity_prior: float = 0.0) -> AssociationModel:
        """Solve the chosen score from the counts (``auto``: ease when the catalog is small enough)."""
        n = co.n_items
        if method == "auto":
            method = "ease" if n <= ease_max_items else "pmi"
        if method == "ease":
            if n > ease_max_items:
                raise InputError(f"EASE on {n} products needs an {n}x{n} inverse (ease_max_items={ease_max_items})",
                                 hint="set recommend.method = 'pmi' or 'auto' for catalogs this large")
            rows, cols, vals = _dense_rows(_ease(co.dense(), ease_lambda), neighbours)
        elif method == "pmi":
            rows, cols, vals = co.pair_i, co.pair_j, _pmi(co, shrinkage)
        elif method == "cooccurrence":
            rows, cols, vals = co.pair_i, co.pair_j, co.pair_weight
        else:
            raise InputError(f"unknown recommendation method {method!r}", hint="use auto, ease, pmi or cooccurrence")
        nbr_idx, nbr_score = _top_per_row(n, rows, cols, vals, neighbours)
        order = np.lexsort((np.arange(n), -co.item_weight)) if n else np.zeros(0, dtype=np.int64)
        return cls(method=method, skus=co.skus, index={s: i for i, s in enumerate(co.skus)},
                   support=co.item_weight.copy(), by_popularity=order, nbr_idx=nbr_idx, nbr_score=nbr_score,
                   version=co.version,
                   prior=popularity_prior * co.item_weight / max(float(co.item_weight.max(initial=0.0)), 1e-12))

    def _association(self, context: Sequence[str], min_support: float) -> np.ndarray:
        """Summed neighbour scores of the context's products, clipped at 0, zero on the context itself."""
        acc = np.zeros(len(self.skus), dtype=np.float64)
        for s in context:
            i = self.index.get(s)
            if i is not None and self.support[i] >= min_support:
                m = self.nbr_idx[i] >= 0
                acc[self.nbr_idx[i][m]] += self.nbr_score[i][m]
        acc[[self.index[s] for s in context if s in self.index]] = 0.0
        return np.maximum(acc, 0.0)

    def together(self, context: Sequence[str], k: int, *, min_support: float = 0.0,
                 allowed: Callable[[str], bool] | None = None) -> list[tuple[str, float]]:
        """Top ``k`` products with a positive association score to the basket ``context`` (not in it)."""
        acc = self._association(context, min_support)
        cand = np.flatnonzero(acc > 0)
        cand = cand[np.lexsort((-self.support[cand], -acc[cand]))]
        return self._take(((int(j), float(acc[j])) for j in cand), k, allowed)

    def rank(self, context: Sequence[str], k: int, *, min_support: float = 0.0,
             allowed: Callable[[str], bool] | None = None) -> list[tuple[str, float, Source]]:
        """The served order: ``association + popularity_prior * support / max(support)``, best first.

        The prior (tuned on validation baskets) lets a much-bought product outrank a weak
        association; with prior 0 this is the association list followed by popular products.
        ``source`` is "together" where the association is positive, else "popular".
        """
        if len(self.skus) == 0:
            return []
        acc = self._association(context, min_support)
        # exact candidates: every associated product, and the most popular ones (best prior otherwise)
        cand = np.union1d(np.flatnonzero(acc > 0), self.by_popularity[: k + len(context) + 64])
        skip = [self.index[s] for s in context if s in self.index]
        if skip:
            cand = cand[~np.isin(cand, skip)]
        score = acc + self.prior
        order = cand[np.lexsort((-self.support[cand], -score[cand]))]
        out: list[tuple[str, float, Source]] = []
        for j in order:
            if len(out) >= k:
                break
            if allowed is None or allowed(self.skus[j]):
                out.append((self.skus[j], float(score[j]), "together" if acc[j] > 0 else "popular"))
        return out

    def popular(self, k: int, *, exclude: Sequence[str] = (),
                allowed: Callable[[str], bool] | None = None) -> list[tuple[str, float]]:
        """The ``k`` most bought products (decayed counts), leaving out ``exclude``."""
        skip = set(exclude)
        it = ((int(j), float(self.support[j])) for j in self.by_popularity if self.skus[j] not in skip)
        return self._take(it, k, allowed)

    def _take(self, scored: Any, k: int, allowed: Callable[[str], bool] | None) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for j, score in scored:
            if len(out) >= k:
                break
            if allowed is None or allowed(self.skus[j]):
                out.append((self.skus[j], score))
        return out


def _ease(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE weights from the Gram matrix: ``B = I - P / diag(P)`` with ``P = (G + λI)^-1``, zero diagonal."""
    if gram.shape[0] == 0:
        return gram
    from threadpoolctl import threadpool_limits

    # One BLAS thread: on a 2-core box busy with inference, multi-threaded OpenBLAS spin-waits and an
    # inverse of 169 products took ~800 ms instead of ~1 ms (measured); it must not steal the second core.
    with threadpool_limits(limits=1, user_api="blas"):
        p = np.linalg.inv(gram + lam * np.eye(gram.shape[0]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def _pmi(co: Cooccurrence, shrinkage: float) -> np.ndarray:
    """Shrunk PMI per listed pair: ``log(C_ij N / (C_i C_j)) * C_ij / (C_ij + shrinkage)``."""
    c = co.pair_weight
    ci, cj = co.item_weight[co.pair_i], co.item_weight[co.pair_j]
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(c * co.total / (ci * cj))
    pmi[~np.isfinite(pmi)] = 0.0
    return pmi * c / (c + shrinkage) if shrinkage > 0 else pmi


def _dense_rows(b: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``m`` largest off-diagonal entries of each row of a dense matrix, as (row, col, value)."""
    n = b.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    b = b.copy()
    np.fill_diagonal(b, -np.inf)
    m = min(m, n - 1)
    if m <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    cols = np.argpartition(-b, m - 1, axis=1)[:, :m] if m < n else np.argsort(-b, axis=1)[:, :m]
    rows = np.repeat(np.arange(n), m)
    cols = cols.ravel()
    return rows, cols, b[rows, cols]


def _top_per_row(n: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                 m: int) -> tuple[np.ndarray, np.ndarray]:
    """Group (row, col, value) triples by row and keep each row's ``m`` best, as padded arrays."""
    width = max(1, min(m, n))
    idx = np.full((n, width), -1, dtype=np.int64)
    score = np.zeros((n, width), dtype=np.float32)
    if len(rows) == 0:
        return idx, score
    order = np.lexsort((-vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.searchsorted(rows, np.arange(n))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < width
    idx[rows[keep], rank[keep]] = cols[keep]
    score[rows[keep], rank[keep]] = vals[keep]
    return idx, score


# -- similar ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProductVectors:
    """What "similar" needs from the catalog: one fused unit vector and the attributes per product.

    ``prices`` holds NaN where unknown; ``categories`` None where unknown.
    """

    skus: tuple[str, ...]
    vectors: np.ndarray  # (n, d) float32, unit rows
    names: tuple[str, ...]
    categories: tuple[str | None, ...]
    prices: np.ndarray  # (n,) float64
    in_stock: np.ndarray  # (n,) bool
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.skus)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != n:
            raise InputError(f"product vectors have shape {self.vectors.shape}, expected ({n}, dim)")
        if not (len(self.names) == len(self.categories) == len(self.prices) == len(self.in_stock) == n):
            raise InputError("product attributes do not have one entry per sku", hint="rebuild them from the catalog")
        if len(set(self.skus)) != n:
            raise InputError("product vectors list a sku twice", hint="give one fused vector per product")
        object.__setattr__(self, "index", {s: i for i, s in enumerate(self.skus)})

    @classmethod
    def build(cls, *, skus: Sequence[str], image: np.ndarray | None, text: np.ndarray | None,
              image_weight: float = 0.5, names: Sequence[str] | None = None,
              categories: Sequence[str | None] | None = None, prices: Sequence[float | None] | None = None,
              in_stock: Sequence[bool] | None = None) -> ProductVectors:
        """Fuse per-product image and text unit vectors: ``[√w·img, √(1-w)·txt]``, renormalised.

        The cosine of two fused vectors is then ``w·cos_img + (1-w)·cos_text`` (for products that
        have both); a product missing a modality (all-zero row) is compared on the other alone.
        """
        n = len(skus)
        parts = []
        for arr, w in ((image, image_weight), (text, 1.0 - image_weight)):
            if arr is not None and w > 0:
                a = np.asarray(arr, dtype=np.float32)
                if a.shape[0] != n:
                    raise InputError(f"{a.shape[0]} vectors for {n} products", hint="one row per sku")
                parts.append(a * np.float32(math.sqrt(w)))
        if not parts:
            raise InputError("no product vectors to compare", hint="give image and/or text embeddings")
        fused = np.concatenate(parts, axis=1)
        norms = np.linalg.norm(fused, axis=1, keepdims=True)
        fused = np.where(norms > 0, fused / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
        return cls(skus=tuple(skus), vectors=fused, names=tuple(names) if names is not None else tuple(skus),
                   categories=tuple(categories) if categories is not None else (None,) * n,
                   prices=np.array([np.nan if p is None else p for p in prices], dtype=np.float64)
                   if prices is not None else np.full(n, np.nan),
                   in_stock=np.array(in_stock, dtype=bool) if in_stock is not None else np.ones(n, dtype=bool))

    @classmethod
    def from_catalog(cls, catalog: Any, *, image_fingerprint: str | None, text_fingerprint: str | None,
                     image_weight: float = 0.5) -> ProductVectors:
        """Fused vectors of every catalog product that has any (:meth:`edge.catalog.db.Catalog.product_vectors`).

        Attributes come from the product row: ``price``, and from its free ``attributes``:
        ``category``, and ``in_stock`` (bool) or ``stock`` (count > 0); unknown = in stock.
        """
        image = catalog.product_vectors("image", image_fingerprint) if image_fingerprint else {}
        text = catalog.product_vectors("text", text_fingerprint) if text_fingerprint else {}
        products = [p for p in catalog.products() if p.sku in image or p.sku in text]
        if not products:
            raise InputError("no catalog product has vectors for the current encoders",
                             hint="enroll products / rebuild the index with the current bundles")

        def stack(vecs: dict[str, np.ndarray]) -> np.ndarray | None:
            if not vecs:
                return None
            dim = len(next(iter(vecs.values())))
            return np.stack([vecs.get(p.sku, np.zeros(dim, np.float32)) for p in products])

        def stocked(attrs: Any) -> bool:
            if "stock" in attrs and isinstance(attrs["stock"], int | float):
                return bool(attrs["stock"] > 0)
            return bool(attrs.get("in_stock", True))

        return cls.build(skus=[p.sku for p in products], image=stack(image), text=stack(text),
                         image_weight=image_weight, names=[p.name for p in products],
                         categories=[p.attributes.get("category") for p in products],
                         prices=[p.price for p in products], in_stock=[stocked(p.attributes) for p in products])

    @classmethod
    def from_store(cls, store: Any, *, image_weight: float = 0.5) -> ProductVectors:
        """Fused vectors under the encoders an :class:`edge.catalog.store.Store` has loaded (call again on reload)."""
        img, txt = getattr(store, "image_encoder", None), getattr(store, "text_encoder", None)
        return cls.from_catalog(store.catalog, image_fingerprint=img.fingerprint if img is not None else None,
                                text_fingerprint=txt.fingerprint if txt is not None else None,
                                image_weight=image_weight)

    def name(self, sku: str) -> str:
        i = self.index.get(sku)
        return self.names[i] if i is not None else sku


@dataclass(frozen=True, slots=True)
class Filters:
    """Restrictions on suggestions: in stock (all kinds), same category and price band (similar)."""

    in_stock_only: bool = False
    same_category: bool = False
    price_band: float | None = None  # e.g. 1.5: price within [p / 1.5, p * 1.5] of the query product

    def __post_init__(self) -> None:
        if self.price_band is not None and not (1.0 <= self.price_band <= 100.0):
            raise InputError(f"price_band must be between 1 and 100, got {self.price_band}",
                             hint="1.5 keeps products priced within a factor 1.5 of the query")


def similar(products: ProductVectors, context: Sequence[str], k: int, *, near_duplicate: float,
            filters: Filters = Filters()) -> list[tuple[str, float]]:
    """Top ``k`` products by cosine to the context's mean vector, minus itself and near-duplicates."""
    ids = [products.index[s] for s in context if s in products.index]
    if not ids:
        return []
    q = products.vectors[ids].mean(axis=0)
    norm = float(np.linalg.norm(q))
    if norm == 0:
        return []
    sims = products.vectors @ (q / norm)
    ok = sims < near_duplicate
    ok[ids] = False
    if filters.in_stock_only:
        ok &= products.in_stock
    anchor = ids[0]
    if filters.same_category and products.categories[anchor] is not None:
        ok &= np.array([c == products.categories[anchor] for c in products.categories])
    if filters.price_band is not None and np.isfinite(products.prices[anchor]):
        p = products.prices[anchor]
        with np.errstate(invalid="ignore"):
            ok &= (products.prices >= p / filters.price_band) & (products.prices <= p * filters.price_band)
    cand = np.flatnonzero(ok)
    top = cand[np.argsort(-sims[cand], kind="stable")[:k]]
    return [(products.skus[j], float(sims[j])) for j in top]


# -- serving ---------------------------------------------------------------------------------------

class Recommender:
    """Serves together / similar / blend from a :class:`BasketStore` and optional product vectors."""

    def __init__(self, *, store: BasketStore, settings: RecommendSettings, products: ProductVectors | None = None,
                 cache_size: int = 4096, background_refresh: bool = True,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.settings = settings
        self._products = products
        self._cache: OrderedDict[tuple[Any, ...], list[Recommendation]] = OrderedDict()
        self._cache_size = cache_size
        self._background = background_refresh
        self._monotonic = monotonic
        self._model: AssociationModel | None = None
        self._built_at = -math.inf
        self._lock = threading.RLock()
        self._rebuild: threading.Thread | None = None
        self.cache_hits = 0
        self.cache_misses = 0
        self.errors = 0

    @property
    def products(self) -> ProductVectors | None:
        return self._products

    def set_products(self, products: ProductVectors | None) -> None:
        """Swap in new product vectors (catalog reload); cached answers are dropped."""
        with self._lock:
            self._products = products
            self._cache.clear()

    def reload_products(self, store: Any) -> None:
        """Re-read product vectors after a catalog/index reload (a store without a catalog leaves them as they are)."""
        if getattr(store, "catalog", None) is None:
            return
        try:
            self.set_products(ProductVectors.from_store(store, image_weight=self.settings.image_weight))
        except InputError as e:
            log.warning("similar products are off: %s", e.message, extra={"hint": e.hint})
            self.set_products(None)

    def model(self) -> AssociationModel:
        """The association model; rebuilt when baskets arrived and ``refresh_s`` has passed.

        The first model is built here; later rebuilds run on a background thread while the
        current model keeps serving (an EASE solve on thousands of products takes seconds, which
        must not land on a kiosk request), unless ``background_refresh`` is off.
        """
        with self._lock:
            model = self._model
            if model is None:
                return self.refresh()
            now = self._monotonic()
            if now - self._built_at >= self.settings.refresh_s and self.store.version != model.version:
                if not self._background:
                    return self.refresh()
                if self._rebuild is None or not self._rebuild.is_alive():
                    self._built_at = now  # one rebuild per refresh period, even if it fails
                    self._rebuild = threading.Thread(target=self._refresh_logged, name="recommend-refresh",
                                                     daemon=True)
                    self._rebuild.start()
            return model

    def refresh(self) -> AssociationModel:
        """Rebuild the model from the store's current counts now, and drop cached answers."""
        s = self.settings
        started = self._monotonic()
        model = AssociationModel.fit(self.store.snapshot(), method=s.method, ease_lambda=s.ease_lambda,
                                     shrinkage=s.shrinkage, ease_max_items=s.ease_max_items,
                                     neighbours=s.neighbours, popularity_prior=s.popularity_prior)
        with self._lock:
            if self._model is None or model.version >= self._model.version:
                self._model, self._built_at = model, started
                self._cache.clear()
            return self._model

    def wait_refreshed(self, timeout_s: float = 30.0) -> None:
        """Block until a background rebuild (if one runs) has finished."""
        thread = self._rebuild
        if thread is not None:
            thread.join(timeout_s)

    def _refresh_logged(self) -> None:
        try:
            self.refresh()
        except Exception:  # the old model keeps serving; the next period tries again
            log.exception("recommendation model rebuild failed")

    def recommend(self, skus: str | Sequence[str], *, kind: Kind = "together", k: int | None = None,
                  filters: Filters = Filters()) -> list[Recommendation]:
        """Suggestions for a product (or a basket of them); cached until the model or products change.

        Order for together/blend: association scores > 0, then popular products, then (only with
        no baskets at all) similar ones. An empty context gives the most popular products.
        """
        context = (skus,) if isinstance(skus, str) else tuple(skus)  # empty: the most popular products
        if kind not in KINDS:
            raise InputError(f"unknown recommendation kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
        k = self.settings.k if k is None else k
        if not 1 <= k <= 1000:
            raise InputError(f"k must be between 1 and 1000, got {k}")
        if kind == "similar" and self._products is None:
            raise InputError("similar products need product vectors, and none are loaded",
                             hint="build the catalog and its index first (storelens catalog ...)")
        with self._lock:
            model = self.model()
            key = (kind, context, k, filters)
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return hit
            self.cache_misses += 1
            out = self._compute(model, context, kind, k, filters)
            self._cache[key] = out
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return out

    def _compute(self, model: AssociationModel, context: tuple[str, ...], kind: Kind, k: int,
                 filters: Filters) -> list[Recommendation]:
        products = self._products
        allowed = None
        if filters.in_stock_only and products is not None:
            stock, idx = products.in_stock, products.index
            allowed = lambda s: s not in idx or bool(stock[idx[s]])  # noqa: E731
        name = products.name if products is not None else (lambda s: s)
        sim = [] if products is None else similar(products, context, k + len(context),
                                                  near_duplicate=self.settings.near_duplicate, filters=filters)
        if kind == "similar":
            return [Recommendation(s, name(s), v, "similar") for s, v in sim[:k]]
        ranked = [Recommendation(s, name(s), v, src) for s, v, src in
                  model.rank(context, k, min_support=self.settings.min_support, allowed=allowed)]
        out = ranked
        if kind == "blend":  # alternate complements and alternatives, complements first; then popular
            out = _interleave([r for r in ranked if r.source == "together"],
                              [Recommendation(s, name(s), v, "similar") for s, v in sim], k)
            out += [r for r in ranked if r.source == "popular" and r.sku not in {o.sku for o in out}][:k - len(out)]
        taken = set(context) | {r.sku for r in out}
        if len(out) < k:  # cold start: no baskets at all (or a catalog smaller than k)
            out += [Recommendation(s, name(s), v, "similar") for s, v in sim if s not in taken][:k - len(out)]
        return out

    # -- MQTT ----------------------------------------------------------------------------------------
    def handle_basket_message(self, payload: bytes | str) -> IngestResult:
        """``<prefix>/events/basket`` handler: count the basket (or reject and count why); never raises."""
        return self.store.handle_message(payload)

    def recommend_command(self, args: dict[str, Any]) -> dict[str, Any]:
        """``cmd/recommend`` handler for :class:`edge.comms.commands.CommandRouter` (``router.register``).

        ``args``: ``sku`` (string) or ``skus`` (list), optional ``kind``, ``k``, ``in_stock_only``,
        ``same_category``, ``price_band``. Returns the reply's ``result``; raises :class:`CommandError`.
        """
        unknown = set(args) - {"id", "sku", "skus", "kind", "k", "in_stock_only", "same_category", "price_band"}
        if unknown:
            raise CommandError(f"recommend command has unknown keys {sorted(unknown)}",
                               hint="use sku or skus, kind, k, in_stock_only, same_category, price_band")
        skus = args.get("skus", [args["sku"]] if "sku" in args else None)
        if not isinstance(skus, list) or not skus or not all(isinstance(s, str) and s.strip() for s in skus):
            raise CommandError("recommend command needs sku (string) or skus (list of strings)",
                               hint='e.g. {"sku": "4011", "kind": "together", "k": 5}')
        k = args.get("k", self.settings.k)
        if isinstance(k, bool) or not isinstance(k, int):
            raise CommandError(f"k must be an integer, got {k!r}", hint='e.g. "k": 5')
        kind = args.get("kind", "together")
        try:
            filters = Filters(in_stock_only=bool(args.get("in_stock_only", False)),
                              same_category=bool(args.get("same_category", False)),
                              price_band=_float_or_none(args.get("price_band")))
            recs = self.recommend(skus, kind=kind, k=k, filters=filters)
        except InputError as e:
            raise CommandError(e.message, hint=e.hint) from e
        return {"skus": skus, "kind": kind, "model_version": self.model().version,
                "recommendations": [r.to_dict() for r in recs]}

    def handle_recommend_command(self, payload: bytes | str) -> dict[str, Any]:
        """Standalone ``cmd/recommend``: payload -> reply ``{"id", "ok", "result" | "error"}``; never raises."""
        req_id: Any = None
        try:
            args = json.loads(payload)
            if not isinstance(args, dict):
                raise CommandError("recommend command must be a JSON object", hint='e.g. {"sku": "4011"}')
            req_id = args.pop("id", None)
            return {"id": req_id, "ok": True, "result": self.recommend_command(args)}
        except ValueError as e:
            return {"id": None, "ok": False, "error": f"recommend command is not JSON: {e}", "code": "CommandError"}
        except CommandError as e:
            return {"id": req_id, "ok": False, "error": str(e), "code": "CommandError"}

    def for_match(self, sku: str) -> list[dict[str, object]] | None:
        """The optional ``recommendations`` field of a kiosk match message (None when switched off)."""
        if not self.settings.in_match_messages:
            return None
        try:
            recs = self.recommend(sku, kind="blend" if self._products is not None else "together")
        except Exception:  # a recommendation problem must never hold back the match message itself
            self.errors += 1
            log.exception("recommendations for a match failed", extra={"sku": sku})
            return None
        return [r.to_dict() for r in recs]

    def stats(self) -> dict[str, Any]:
        m = self._model
        return {"baskets": self.store.counters(), "model_version": m.version if m else None,
                "method": m.method if m else None, "products": len(m.skus) if m else 0,
                "cache_hits": self.cache_hits, "cache_misses": self.cache_misses, "errors": self.errors}


def _interleave(a: list[Recommendation], b: list[Recommendation], k: int) -> list[Recommendation]:
    """a[0], b[0], a[1], b[1], ... without repeating a sku, at most ``k``."""
    out: list[Recommendation] = []
    seen: set[str] = set()
    for i in range(max(len(a), len(b))):
        for r in (a[i] if i < len(a) else None, b[i] if i < len(b) else None):
            if r is not None and r.sku not in seen and len(out) < k:
                out.append(r)
                seen.add(r.sku)
    return out


def _float_or_none(v: object) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise CommandError(f"price_band must be a number, got {v!r}")
    return float(v)


def open_recommender(settings: RecommendSettings, *, data_dir: Any, products: ProductVectors | None = None,
                     clock: Callable[[], float] = time.time) -> Recommender:
    """The runtime's recommender: ``<data_dir>/baskets.db`` with the configured decay and limits."""
    from pathlib import Path

    hl = None if settings.half_life_days is None else settings.half_life_days * 86400.0
    store = BasketStore(path=Path(data_dir) / "baskets.db", half_life_s=hl,
                        dedup_window_s=settings.dedup_window_days * 86400.0, max_items=settings.max_basket_items,
                        clock=clock)
    return Recommender(store=store, settings=settings, products=products)


def attach(recommender: Recommender, *, link: Any | None, router: Any) -> None:
    """Wire recommendations into the runtime: ``events/basket`` on the :class:`edge.comms.mqtt.MqttLink`
    and ``cmd/recommend`` on the :class:`edge.comms.commands.CommandRouter` (call before ``link.start()``).

    The basket handler runs on paho's network thread: one small SQLite transaction, never raises.
    """
    router.register("recommend", recommender.recommend_command)
    if link is not None:
        link.add_topic_handler(link.topic("events/basket"),
                               lambda _topic, payload, _props: recommender.handle_basket_message(payload))


def recommender_for(settings: Any, *, store: Any | None = None) -> Recommender:
    """The runtime's recommender from :class:`edge.core.config.Settings`: ``<catalog.data_dir>/baskets.db``,
    and product vectors from an :class:`edge.catalog.store.Store` when it has any (else "similar" is off, said once)."""
    rec = open_recommender(settings.recommend, data_dir=settings.catalog.data_dir)
    if store is not None:
        rec.reload_products(store)
    return rec
