"""Similar products: item-to-item cosine on fused image and text product vectors.

The product itself and its near-duplicates are left out; results can be restricted to
products in stock, of the same category, or within a price band.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.core.config import RecommendSettings
from edge.core.errors import InputError

_DEFAULTS = RecommendSettings()


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
              image_weight: float = _DEFAULTS.image_weight, names: Sequence[str] | None = None,
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
                     image_weight: float = _DEFAULTS.image_weight) -> ProductVectors:
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
    def from_store(cls, store: Any, *, image_weight: float = _DEFAULTS.image_weight) -> ProductVectors:
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


NO_FILTERS = Filters()


def similar(products: ProductVectors, context: Sequence[str], k: int, *, near_duplicate: float,
            filters: Filters = NO_FILTERS) -> list[tuple[str, float]]:
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
