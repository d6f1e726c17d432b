"""The built-in remote commands (``<prefix>/cmd/<verb>``): reload, enroll, remove, search, snapshot, recommend.

Each handler takes the command's arguments (a dict, already checked for size, JSON and token
by :class:`~edge.comms.commands.CommandRouter`) and returns the reply's ``result``, or raises
:class:`~edge.core.errors.CommandError`. They run on the router's worker thread, never on the
frame loop's.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge.catalog.ranking import DEFAULT_K
from edge.comms.commands import CommandRouter, load_images, optional_int, reject_unknown_keys, require_str
from edge.core.errors import CommandError, InputError
from edge.models.encoders.base import ImageEncoder
from edge.pipeline.label_text import reload_label_text
from edge.recommend.service import Recommender
from edge.recommend.similar import Filters
from edge.text.profiles import TextProfiles, catalog_profiles

if TYPE_CHECKING:
    from edge.pipeline.loop import Matcher, Runtime

SNAPSHOT_MAX_WIDTH = 640  # px: a snapshot is for a person to look at, not for matching
SNAPSHOT_JPEG_QUALITY = 80
NAME_MAX_CHARS = 256
SEARCH_TEXT_MAX_CHARS = 1000
SEARCH_K = (1, 100)  # allowed range of a search's k
RECOMMEND_KEYS = ("sku", "skus", "kind", "k", "in_stock_only", "same_category", "price_band")


class RuntimeCommands:
    """reload / enroll / remove / search / snapshot against a :class:`~edge.pipeline.loop.Runtime`.

    ``encoder_loader`` reloads the image encoder named in config; ``matcher_loader`` opens the
    matcher (catalog and index) for a new encoder. Without them, reload only reopens the index.
    """

    def __init__(self, rt: Runtime, *, encoder_loader: Callable[[], ImageEncoder] | None = None,
                 matcher_loader: Callable[[ImageEncoder], Matcher] | None = None) -> None:
        self.rt = rt
        self._encoder_loader = encoder_loader
        self._matcher_loader = matcher_loader

    def register(self, router: CommandRouter) -> None:
        for verb, fn in (("reload", self.reload), ("enroll", self.enroll), ("remove", self.remove),
                         ("search", self.search), ("snapshot", self.snapshot)):
            router.register(verb, fn)

    def reload(self, args: dict[str, Any]) -> dict[str, Any]:
        """Catalog/index: the matcher reopens the newest generation. Bundle: when its fingerprint changed, a new
        encoder *and* a matcher opened with it (its index must be built by that encoder) are swapped in together.
        Everything is loaded before the swap, so frames wait at most one batch and a failure keeps the old state."""
        rt = self.rt
        new_encoder = self._encoder_loader() if self._encoder_loader and args.get("bundle", True) else None
        if new_encoder is not None and new_encoder.fingerprint == rt.encoder.fingerprint:
            new_encoder = None
        if new_encoder is not None:
            if self._matcher_loader is None:
                raise CommandError("the bundle changed but this runtime cannot reopen the index for it",
                                   hint="restart storelens run")
            matcher = self._matcher_loader(new_encoder)
            rt.swap_models(new_encoder, matcher, text=_label_text(rt, matcher))
        else:  # the same matcher reopens its newest index generation, in the swap (new thresholds too)
            rt.swap_models(rt.encoder, rt.matcher, reload=True, text=_label_text(rt, rt.matcher))
        reload_label_text(rt, rt.matcher)  # OCR on once calibrate --fusion stored a weight; new weights
        if rt.recommender is not None:
            rt.recommender.reload_products(rt.matcher)
        rt.publish_status()
        return {"catalog_version": rt.matcher.catalog_version, "bundle": rt.encoder.fingerprint}

    def enroll(self, args: dict[str, Any]) -> dict[str, Any]:
        sku = require_str(args, "sku")
        name = args.get("name", sku)
        if not isinstance(name, str) or len(name) > NAME_MAX_CHARS:
            raise CommandError(f"'name' must be a string of at most {NAME_MAX_CHARS} characters")
        images = self._images(args)
        # The matcher embeds, writes the next index generation beside the current one and swaps it in;
        # the frame loop keeps matching on the old generation meanwhile (no model lock held here).
        result = _optional(self.rt.matcher, "enroll")(sku, name=name, images=images)
        return {"sku": sku, "images": len(images), "catalog_version": self.rt.matcher.catalog_version,
                **_as_dict(result)}

    def remove(self, args: dict[str, Any]) -> dict[str, Any]:
        sku = require_str(args, "sku")
        if _optional(self.rt.matcher, "remove")(sku) is False:
            raise CommandError(f"sku {sku!r} is not in the catalog", hint="check the sku (storelens catalog list)")
        return {"sku": sku, "removed": True, "catalog_version": self.rt.matcher.catalog_version}

    def search(self, args: dict[str, Any]) -> dict[str, Any]:
        k = optional_int(args, "k", DEFAULT_K, *SEARCH_K)
        if "text" in args:
            text = require_str(args, "text", max_len=SEARCH_TEXT_MAX_CHARS)
            cands: Sequence[Any] = _optional(self.rt.matcher, "search_text")(text, k)
        elif "images" in args:
            cands = self.rt.match_images(self._images(args)[:1], k)[0]
        else:
            raise CommandError("search needs 'text' or 'images'", hint='e.g. {"text": "oat milk"}')
        return {"candidates": [c.to_dict() for c in cands], "catalog_version": self.rt.matcher.catalog_version}

    def snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        camera = require_str(args, "camera", max_len=64)
        frame = self.rt.last_frame(camera)
        if frame is None:
            raise CommandError(f"no frame from camera {camera!r} yet",
                               hint=f"cameras: {[c.name for c in self.rt.cameras]}")
        img = frame.image
        if img.shape[1] > SNAPSHOT_MAX_WIDTH:
            height = max(1, round(img.shape[0] * SNAPSHOT_MAX_WIDTH / img.shape[1]))
            img = cv2.resize(img, (SNAPSHOT_MAX_WIDTH, height), interpolation=cv2.INTER_AREA)
        ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_JPEG_QUALITY])
        if not ok:
            raise CommandError("could not encode the snapshot")
        return {"camera": camera, "ts": frame.ts, "jpeg_b64": base64.b64encode(jpg.tobytes()).decode()}

    def _images(self, args: dict[str, Any]) -> list[np.ndarray]:
        return load_images(args.get("images"), allowed_dir=self.rt.settings.mqtt.enroll_dir)


def _label_text(rt: Runtime, matcher: Any) -> tuple[TextProfiles, dict[str, str]] | None:
    """The word profiles and names of ``matcher``'s catalog for the label-text reranker (None: no reranker)."""
    if rt.reranker is None or not hasattr(matcher, "catalog"):
        return None
    return catalog_profiles(matcher.catalog), {p.sku: p.name for p in matcher.catalog.products()}


def recommend_handler(recommender: Recommender) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The ``cmd/recommend`` handler: ``sku`` (string) or ``skus`` (list), optional ``kind``, ``k``,
    ``in_stock_only``, ``same_category``, ``price_band``; replies with the ranked recommendations."""

    def handle(args: dict[str, Any]) -> dict[str, Any]:
        reject_unknown_keys(args, RECOMMEND_KEYS, verb="recommend")
        skus = args.get("skus", [args["sku"]] if "sku" in args else None)
        if not isinstance(skus, list) or not skus or not all(isinstance(s, str) and s.strip() for s in skus):
            raise CommandError("recommend command needs sku (string) or skus (list of strings)",
                               hint='e.g. {"sku": "4011", "kind": "together", "k": 5}')
        k = optional_int(args, "k", recommender.settings.k)
        kind = args.get("kind", "together")
        try:
            filters = Filters(in_stock_only=bool(args.get("in_stock_only", False)),
                              same_category=bool(args.get("same_category", False)),
                              price_band=_float_or_none(args.get("price_band")))
            if unknown := unknown_skus(recommender, skus):
                raise CommandError(f"sku {unknown[0]!r} is not in the catalog (nor in any sold basket)",
                                   hint="check the sku (storelens catalog list); an empty list would look like "
                                   "a product nobody buys with anything")
            recs = recommender.recommend(skus, kind=kind, k=k, filters=filters)
        except InputError as e:
            raise CommandError(e.message, hint=e.hint) from e
        return {"skus": skus, "kind": kind, "model_version": recommender.model().version,
                "recommendations": [r.to_dict() for r in recs]}

    return handle


def unknown_skus(recommender: Recommender, skus: Sequence[str]) -> list[str]:
    """Skus neither the catalog's products nor the sold baskets know (none when the recommender knows no sku)."""
    products = recommender.products
    known = set(products.skus if products is not None else ()) | set(recommender.model().skus)
    return [s for s in skus if s not in known] if known else []


def _float_or_none(v: object) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise CommandError(f"price_band must be a number, got {v!r}")
    return float(v)


def _optional(matcher: Any, name: str) -> Any:
    fn = getattr(matcher, name, None)
    if fn is None:
        raise CommandError(f"this device's catalog does not support {name!r}",
                           hint="use a catalog/search backend with enroll/remove/text search")
    return fn


def _as_dict(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if hasattr(result, "to_dict"):
        return dict(result.to_dict())
    return dict(result) if isinstance(result, dict) else {"result": result}
