"""The kiosk screen as the runtime sees it: built from config, fed decisions, started and stopped.

:func:`create_screen` wires the parts for a :class:`~edge.core.config.Settings` whose
``[kiosk_screen]`` is enabled: product cards from the catalog, the hub (decisions -> page
events), the page's three actions, the confirmations store under
``<catalog.data_dir>/confirmations/`` and the aiohttp server. The runtime calls
:meth:`KioskScreen.on_decision` for every match message it publishes (with the region crop and
the view id), :meth:`~KioskScreen.start` after its broker link, :meth:`~KioskScreen.stop` on
shutdown. Recommendations are computed after a decision is on the page, on the server's
worker threads, so they never delay the decision itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.core.errors import ConfigError
from edge.kiosk.actions import KioskActions, Publish, SearchFn
from edge.kiosk.cards import ProductCards
from edge.kiosk.confirmations import ConfirmationStore
from edge.kiosk.hub import KioskHub
from edge.kiosk.labels import LOCALES, labels_for
from edge.kiosk.server import KioskServer, LinkStatus, PageConfig

if TYPE_CHECKING:
    from edge.core.config import Settings

log = logging.getLogger("storelens.kiosk")


class KioskScreen:
    """One kiosk page for one camera; see the module docstring."""

    def __init__(self, *, hub: KioskHub, actions: KioskActions, server: KioskServer,
                 confirmations: ConfirmationStore) -> None:
        self.hub = hub
        self.actions = actions
        self.server = server
        self.confirmations = confirmations
        self._catalog_version: Any = None
        actions.set_event_sink(self.push)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.confirmations.close()

    def on_decision(self, msg: dict[str, Any], *, crop: np.ndarray | None = None, view_id: str | None = None) -> None:
        """A published ``match`` message: to the page now (cheap: a few catalog reads), recommendations after."""
        version = msg.get("catalog_version")
        if version != self._catalog_version:  # photos may have changed with the catalog
            self._catalog_version = version
            self.actions.cards.forget_photos()
        event = self.hub.on_match(msg, crop=crop, view_id=view_id)
        if event is not None:
            self.push(event)

    def push(self, event: dict[str, Any]) -> None:
        """Send a decision event to the page; for a shown product, its recommendations follow."""
        self.server.broadcast(event)
        product = event.get("product")
        if event.get("kind") == "known" and product and not event.get("heartbeat"):
            match_id, sku = str(event["match_id"]), str(product["sku"])
            self.server.background(lambda: self.actions.recommendation_event(match_id, sku))


def create_screen(settings: Settings, *, catalog: Any, publish: Publish, search: SearchFn | None = None,
                  recommender: Any | None = None, link_status: LinkStatus | None = None) -> KioskScreen:
    """The kiosk screen ``settings.kiosk_screen`` describes, over ``catalog`` (an :class:`edge.catalog.db.Catalog`).

    ``publish(suffix, message)`` sends a result under the topic prefix through the outbox;
    ``search(query, k)`` is the catalog's hybrid text search; ``link_status()`` says whether the
    broker link is ``online``, ``offline`` or ``off``.
    """
    ks = settings.kiosk_screen
    cameras = [c.name for c in settings.cameras]
    kiosk_cams = [c.name for c in settings.cameras if c.mode == "kiosk"]
    if ks.camera is not None and ks.camera not in cameras:
        raise ConfigError(f"kiosk_screen.camera = {ks.camera!r} is not a configured camera",
                          hint=f"use one of {cameras} (or leave it empty for the first kiosk camera)")
    camera = ks.camera or (kiosk_cams[0] if kiosk_cams else None)
    data_dir = settings.catalog.data_dir
    cards = ProductCards(catalog, data_dir=data_dir, hidden=frozenset({settings.decision.empty_sku}))
    hub = KioskHub(cards, camera=camera, empty_sku=settings.decision.empty_sku, candidates=ks.candidates)
    confirmations = ConfirmationStore(data_dir / "confirmations", max_items=ks.confirmations_max)
    # the page's own token, checked by the server on every request (never the admin mqtt.command_token)
    token = ks.token.get_secret_value() if ks.token else None
    actions = KioskActions(hub=hub, cards=cards, confirmations=confirmations, publish=publish,
                           device=settings.device.id, search=search, recommender=recommender,
                           max_bytes=min(ks.max_request_bytes, settings.mqtt.command_max_bytes),
                           results=ks.search_results, recommendations=ks.recommendations)
    page = PageConfig(language=ks.language, locale=LOCALES[ks.language], labels=labels_for(ks.language),
                      currency=ks.currency, device=settings.device.id,
                      title=ks.title or labels_for(ks.language)["default_title"], token_required=token is not None)
    server = KioskServer(host=ks.host, port=ks.port, hub=hub, actions=actions, cards=cards, page=page,
                         link_status=link_status, token=token, allowed_hosts=ks.allowed_hosts,
                         max_connections=ks.max_connections, max_event_clients=ks.max_event_clients,
                         header_timeout_s=ks.header_timeout_s)
    return KioskScreen(hub=hub, actions=actions, server=server, confirmations=confirmations)


class _LiveCatalog:
    """The runtime's current catalog, looked up on every call: a reload may swap the store underneath."""

    def __init__(self, runtime: Any) -> None:
        self._rt = runtime

    def get(self, sku: str) -> Any:
        return self._rt.matcher.catalog.get(sku)

    def images(self, sku: str) -> list[str]:
        return list(self._rt.matcher.catalog.images(sku))


def attach_screen(runtime: Any, *, recommender: Any | None = None) -> KioskScreen:
    """The kiosk screen for a :class:`~edge.pipeline.loop.Runtime` whose matcher is the catalog store.

    Catalog, search and broker state are read through the runtime (so a model or catalog reload
    is seen); confirmations are published with ``runtime.publish_result`` (the outbox).
    """
    if getattr(runtime.matcher, "catalog", None) is None:
        raise ConfigError("kiosk_screen needs the catalog store as the matcher",
                          hint="run it with `storelens run` on a catalog built by `storelens catalog`")

    def search(query: str, k: int) -> list[Any]:
        return list(runtime.matcher.search_text(query, k))

    def link_status() -> str:
        link = runtime.link
        return "off" if link is None else ("online" if link.connected else "offline")

    return create_screen(runtime.settings, catalog=_LiveCatalog(runtime), publish=runtime.publish_result,
                         search=search, recommender=recommender, link_status=link_status)
