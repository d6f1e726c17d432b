"""Product cards for the kiosk screen: what a product looks like on the page, from the catalog.

A card is a small JSON object (sku, name, price, location, image URL). Location comes from
the catalog's ``location`` column, else from the product's attributes (``location``, ``aisle``,
``shelf``, ``section``); the photo is the product's first reference image, served by the
kiosk server at ``/img/<sku>`` as a JPEG scaled to at most :data:`THUMB_SIDE` pixels (cached).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import cv2

from edge.catalog.db import Product

THUMB_SIDE = 640  # px, longest side of a served product photo (a portrait card is about 480 px wide)
THUMB_QUALITY = 82
LOCATION_KEYS = ("location", "aisle", "shelf", "section", "department")


class CatalogReader(Protocol):
    """What cards need from :class:`edge.catalog.db.Catalog`."""

    def get(self, sku: str) -> Product | None: ...

    def images(self, sku: str) -> list[str]: ...


def location_of(p: Product) -> str | None:
    """The shelf location: the ``location`` column, else attributes joined (``Aisle 4 · Shelf B``)."""
    if p.location:
        return p.location
    attrs: Mapping[str, Any] = p.attributes or {}
    if isinstance(attrs.get("location"), str) and attrs["location"].strip():
        return str(attrs["location"]).strip()
    parts = [f"{k.title()} {attrs[k]}" for k in LOCATION_KEYS[1:] if attrs.get(k) not in (None, "")]
    return " · ".join(parts) or None


class ProductCards:
    """Cards and product photos for skus, read from a catalog (thread-safe; photos cached)."""

    def __init__(self, catalog: CatalogReader, *, data_dir: Path | None = None, hidden: frozenset[str] = frozenset(),
                 cache_size: int = 128) -> None:
        self.catalog = catalog
        self.data_dir = data_dir
        self.hidden = hidden  # skus never shown as a product (the empty-tray entry)
        self._photos: OrderedDict[str, bytes | None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def card(self, sku: str, *, score: float | None = None) -> dict[str, Any] | None:
        """The card of ``sku``; None for a hidden sku and for a sku the catalog does not hold (a basket
        event or a stale match may name one): the page only shows products a tap can confirm."""
        if sku in self.hidden:
            return None
        p = self.catalog.get(sku)
        if p is None:
            return None
        card: dict[str, Any] = {"sku": sku, "name": p.name, "price": p.price, "location": location_of(p),
                                "image": f"/img/{quote(sku, safe='')}" if self.catalog.images(sku) else None}
        if score is not None:
            card["score"] = round(float(score), 4)
        return card

    def cards(self, items: list[Any], limit: int) -> list[dict[str, Any]]:
        """Cards for ranked items (anything with ``sku``, optional ``score``); hidden and unknown skus left out."""
        out = []
        for it in items:
            c = self.card(str(it.sku), score=getattr(it, "score", None))
            if c is not None:
                out.append(c)
            if len(out) >= limit:
                break
        return out

    def photo(self, sku: str) -> bytes | None:
        """The product's first readable reference image as a scaled JPEG; None when it has none."""
        with self._lock:
            if sku in self._photos:
                self._photos.move_to_end(sku)
                return self._photos[sku]
        data = self._encode(sku)
        with self._lock:
            self._photos[sku] = data
            while len(self._photos) > self._cache_size:
                self._photos.popitem(last=False)
        return data

    def forget_photos(self) -> None:
        """Drop cached photos (after a catalog change)."""
        with self._lock:
            self._photos.clear()

    def _encode(self, sku: str) -> bytes | None:
        if sku in self.hidden or self.catalog.get(sku) is None:
            return None
        for raw in self.catalog.images(sku):
            path = Path(raw)
            if not path.is_absolute() and not path.is_file() and self.data_dir is not None:
                path = self.data_dir / path
            image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
            if image is None:
                continue
            h, w = image.shape[:2]
            scale = THUMB_SIDE / max(h, w)
            if scale < 1:
                image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                                   interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
            if ok:
                return bytes(buf.tobytes())
        return None
