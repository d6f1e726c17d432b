"""Serving recommendations: together / similar / blend, cached, with the model rebuilt in the background.

:class:`Recommender` answers from an :class:`~edge.recommend.associations.AssociationModel`
(refit from the basket store at most every ``refresh_s``, on a background thread while the
old model serves) and optional :class:`~edge.recommend.similar.ProductVectors`. Answers are
cached per request until the model or the products change. So a basket reaches a running box's
answers (the kiosk, ``cmd/recommend``, match messages) up to ``refresh_s`` (300 s) after it
arrived, while ``storelens recommend``, a new process, builds its model from every basket
stored: the difference is the refresh period, not a lost basket. Products with a positive
association are "together", the others "popular"; with no baskets at all, similar products
fill the list (cold start). Each result says which of those it came from.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge.core.config import RecommendSettings
from edge.core.errors import InputError
from edge.recommend.associations import AssociationModel, Source
from edge.recommend.baskets import BasketStore, IngestResult
from edge.recommend.similar import NO_FILTERS, Filters, ProductVectors, similar

Kind = Literal["together", "similar", "blend"]
KINDS: tuple[str, ...] = ("together", "similar", "blend")
CACHE_SIZE = 4096  # cached answers (kind, products, k, filters), least recently used dropped first

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


class Recommender:
    """Serves together / similar / blend from a :class:`BasketStore` and optional product vectors."""

    def __init__(self, *, store: BasketStore, settings: RecommendSettings, products: ProductVectors | None = None,
                 cache_size: int = CACHE_SIZE, background_refresh: bool = True,
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
                  filters: Filters = NO_FILTERS) -> list[Recommendation]:
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

    def handle_basket_message(self, payload: bytes | str, *, token: str | None = None,
                              known: Callable[[str], bool] | None = None) -> IngestResult:
        """``<prefix>/events/basket`` handler: count the basket (or reject and count why); never raises.

        ``token``: the secret the event must carry; ``known(sku)``: whether the catalog holds a sku.
        """
        return self.store.handle_message(payload, token=token, known=known)

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


def open_recommender(settings: RecommendSettings, *, data_dir: Any, products: ProductVectors | None = None,
                     clock: Callable[[], float] = time.time) -> Recommender:
    """The runtime's recommender: ``<data_dir>/baskets.db`` with the configured decay and limits."""

    hl = None if settings.half_life_days is None else settings.half_life_days * 86400.0
    store = BasketStore(path=Path(data_dir) / "baskets.db", half_life_s=hl,
                        dedup_window_s=settings.dedup_window_days * 86400.0, max_items=settings.max_basket_items,
                        clock=clock, max_per_minute=settings.max_baskets_per_minute)
    return Recommender(store=store, settings=settings, products=products)


def recommender_for(settings: Any, *, store: Any | None = None) -> Recommender:
    """The runtime's recommender from :class:`edge.core.config.Settings`: ``<catalog.data_dir>/baskets.db``,
    and product vectors from an :class:`edge.catalog.store.Store` when it has any (else "similar" is off, said once)."""
    rec = open_recommender(settings.recommend, data_dir=settings.catalog.data_dir)
    if store is not None:
        rec.reload_products(store)
    return rec
