"""Building a :class:`~edge.pipeline.loop.Runtime`: from given parts, or from config with the real ones.

:func:`assemble_runtime` wires what the loop needs around an encoder and a matcher: a capture
thread per camera, a gate and a voter per region, the outbox, the broker link, the command
router with its handlers, and optionally recommendations and label text. :func:`build_runtime`
opens the real parts a config names (encoders, catalog store, baskets, OCR) and assembles them.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from edge.comms.commands import CommandRouter
from edge.comms.mqtt import MqttLink
from edge.comms.outbox import Outbox
from edge.core.config import CameraSettings, RoiSettings, Settings
from edge.core.errors import StoreLensError
from edge.models.encoders.base import ImageEncoder
from edge.ops.hooks import RuntimeHooks
from edge.pipeline.capture import CameraThread, SourceFactory
from edge.pipeline.gate import NEVER_STEADY_WARN_S, RegionGate
from edge.pipeline.handlers import RuntimeCommands, recommend_handler
from edge.pipeline.item import ItemVoter
from edge.pipeline.label_text import label_reranker
from edge.pipeline.loop import Matcher, Region, Runtime, vote_params
from edge.pipeline.vote import PlanogramPrior, RegionVoter
from edge.recommend.basket_events import MAX_PAYLOAD_BYTES as BASKET_MAX_BYTES
from edge.recommend.service import Recommender
from edge.text.fusion import LabelTextReranker

log = logging.getLogger("storelens.runtime")


def assemble_runtime(*, settings: Settings, encoder: ImageEncoder, matcher: Matcher,
                     sources: dict[str, SourceFactory] | None = None,
                     encoder_loader: Callable[[], ImageEncoder] | None = None,
                     matcher_loader: Callable[[ImageEncoder], Matcher] | None = None,
                     out: IO[str] | None = None, outbox_path: Path | None = None,
                     recommender: Recommender | None = None, reranker: LabelTextReranker | None = None) -> Runtime:
    """A runtime around ``encoder`` and ``matcher``; ``sources`` replace cameras' configured sources by name."""
    wake = threading.Event()
    m = settings.mqtt
    prefix = settings.topic_prefix
    cameras = [CameraThread(settings=c, factory=(sources or {}).get(c.name), on_frame=wake.set)
               for c in settings.cameras]
    outbox = Outbox(path=outbox_path or settings.catalog.data_dir / "outbox.db", max_messages=m.outbox_max_messages,
                    max_age_s=m.outbox_max_age_s, durability=m.outbox_durability)
    link = MqttLink(settings=m, prefix=prefix, outbox=outbox,
                    client_id=f"storelens-{settings.device.store}-{settings.device.id}") if m.enabled else None

    def reply(topic: str, body: bytes) -> None:
        if link is not None:
            link.publish_now(topic, body, qos=1)

    router = CommandRouter(prefix=prefix, reply=reply, max_bytes=m.command_max_bytes,
                           token=m.command_token.get_secret_value() if m.command_token else None)
    rt = Runtime(settings=settings, encoder=encoder, matcher=matcher, cameras=cameras,
                 regions=_regions(settings, matcher), wake=wake, outbox=outbox, link=link, router=router,
                 out=out if out is not None else sys.stdout, recommender=recommender, reranker=reranker,
                 hooks=RuntimeHooks.from_settings(settings, link))
    rt.extra_status["outbox"] = lambda: outbox.stats().to_dict()  # a full disk shows in the retained status
    RuntimeCommands(rt, encoder_loader=encoder_loader, matcher_loader=matcher_loader).register(router)
    for region in (r for regions in rt.regions.values() for r in regions):  # a view that never holds still: said
        region.gate.watch_never_steady(region.key, after=round(region.camera.fps * NEVER_STEADY_WARN_S))
    if recommender is not None:  # events/basket in, cmd/recommend, `recommendations` in match messages
        attach_recommender(recommender, link=link, router=router, known=_catalog_holds(rt))
    if settings.kiosk_screen.enabled:  # the shopper's page (edge.kiosk); starts and stops with the runtime
        from edge.kiosk.screen import attach_screen

        rt.screen = attach_screen(rt, recommender=recommender)
    from edge.shelf.attach import attach_shelf

    attach_shelf(rt)  # shelf cameras: alerts, history and, with the kiosk screen's server, the /shelf page
    return rt


def attach_recommender(recommender: Recommender, *, link: MqttLink | None, router: CommandRouter,
                       known: Callable[[str], bool] | None = None) -> None:
    """``cmd/recommend`` on the router and ``events/basket`` on the link (call before ``link.start()``).

    The basket handler runs on paho's network thread: one small SQLite transaction, never raises.
    A basket must carry the router's token when it has one; ``known(sku)`` drops skus the catalog lacks.
    """
    router.register("recommend", recommend_handler(recommender))

    def on_basket(_topic: str, payload: bytes, _props: Any) -> None:
        recommender.handle_basket_message(payload, token=router.token, known=known)

    if link is not None:
        link.add_topic_handler(link.topic("events/basket"), on_basket, max_bytes=BASKET_MAX_BYTES)


def _catalog_holds(rt: Runtime) -> Callable[[str], bool] | None:
    """Whether the runtime's current catalog (read on every call: a reload swaps it) holds a sku; None for a
    matcher without a catalog (then baskets are not checked against one)."""
    if getattr(rt.matcher, "catalog", None) is None:
        return None
    return lambda sku: rt.matcher.catalog.get(sku) is not None  # type: ignore[attr-defined]


def _regions(settings: Settings, matcher: Matcher) -> dict[str, list[Region]]:
    """A gate and a voter per region of interest; shelf regions vote on their planned sku."""
    params = vote_params(settings, matcher)
    g = settings.gate
    fpv = g.frames_per_view or settings.decision.window
    items = _items_end(settings, matcher)

    def voter(c: CameraSettings, r: RoiSettings) -> RegionVoter | ItemVoter:
        if c.mode == "kiosk":
            return ItemVoter(camera=c.name, roi=r.name, params=params, items_span_views=items)
        shelf = c.mode == "shelf"
        return RegionVoter(camera=c.name, roi=r.name, params=params, expected_sku=r.expected_sku if shelf else None,
                           prior=shelf_prior(settings) if shelf else None)

    return {c.name: [Region(c, r, RegionGate(change_threshold=g.change_threshold,
                                             steady_frames=g.steady_frames if c.mode == "kiosk" else 0,
                                             frames_per_view=fpv, enabled=g.enabled,
                                             remember=settings.shelf.remember_views if c.mode == "shelf" else 0),
                            voter(c, r))
                     for r in c.rois]
            for c in settings.cameras}


def _items_end(settings: Settings, matcher: Matcher) -> bool:
    """Whether a kiosk item can span views: it ends when the tray shows the catalog's empty entry, so that
    entry must be enrolled; without it every view is its own item (and the operator is told how to fix it)."""
    if not any(c.mode == "kiosk" for c in settings.cameras):
        return True
    catalog = getattr(matcher, "catalog", None)
    if catalog is None or not hasattr(catalog, "get"):
        return True  # a matcher without a catalog (tests, benchmarks): trust the config
    sku = settings.decision.empty_sku
    if catalog.get(sku) is not None:
        return True
    log.warning("kiosk: the catalog has no %r entry (decision.empty_sku), so an item cannot span views and every "
                "view is its own item; enroll photos of the empty tray: storelens catalog add %s --name 'Empty tray' "
                "--image tray.jpg", sku, sku)
    return False


def shelf_prior(settings: Settings) -> PlanogramPrior:
    """The ``[shelf]`` planogram prior of shelf regions' votes."""
    s = settings.shelf
    return PlanogramPrior(gap=s.planned_gap, below=s.planned_below, other_below=s.other_below)


def build_runtime(settings: Settings) -> Runtime:
    """The real parts the config names: the image (and, if it loads, text) encoder and the catalog store."""
    from edge.catalog.store import Store
    from edge.models.encoders import load_image_encoder, load_text_encoder
    from edge.recommend.service import recommender_for

    image = load_image_encoder(settings.model)
    try:
        text = load_text_encoder(settings.model)
    except StoreLensError as e:  # text search is optional at a camera; say so, keep running
        log.warning("text encoder not loaded; the search command accepts images only", extra={"error": str(e)})
        text = None

    def open_store(encoder: Any) -> Store:
        return Store.from_settings(settings, image_encoder=encoder, text_encoder=text)

    store = open_store(image)
    rt = assemble_runtime(settings=settings, encoder=image, matcher=store,
                          encoder_loader=lambda: load_image_encoder(settings.model), matcher_loader=open_store,
                          recommender=recommender_for(settings, store=store),
                          reranker=label_reranker(settings, store))
    from edge.fleet.updates import attach_catalog_updates

    attach_catalog_updates(rt, store)  # catalog snapshots the store announces (fleet.updates; needs [mqtt])
    from edge.pipeline.confirm import attach_learning

    attach_learning(rt)  # confirmations (kiosk, cmd/confirm, events/scan) become learned photos
    return rt
