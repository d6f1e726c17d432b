"""What the kiosk page may ask for: ``search``, ``recommend`` and ``confirm`` — and nothing else.

Requests go through a :class:`~edge.comms.commands.CommandRouter` of their own, so the page
gets exactly the validation an MQTT command gets: the payload size limit, a JSON object,
argument checks — and only the three verbs registered here exist: enroll, remove, reload or
snapshot cannot be reached from the page. Who may use the page at all is the server's
``kiosk_screen.token`` (:mod:`edge.kiosk.guard`), never the admin ``mqtt.command_token``: the
page's browser must not hold the key to the device's commands (issue 28, finding 9).

A confirmation is kept in the :class:`~edge.kiosk.confirmations.ConfirmationStore` (with the
crop the runtime decided on) and published as ``<prefix>/<camera>/confirm`` through the same
publish path as every result (the outbox, QoS ``mqtt.qos``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from edge.comms.commands import CommandRouter, require_str
from edge.core.errors import CommandError, InputError
from edge.kiosk.cards import ProductCards
from edge.kiosk.confirmations import Confirmation, ConfirmationStore
from edge.kiosk.hub import KioskHub, ShownMatch

log = logging.getLogger("storelens.kiosk")

CONFIRM_SCHEMA = "storelens.confirm/1"
SOURCES = ("candidate", "search", "recommendation")
VERBS = ("search", "recommend", "confirm")
MAX_QUERY_CHARS = 200
# reply codes that are the device's failure, not the page's: HTTP 5xx so the page retries rather than blames
SERVER_SIDE = {"internal": 500, "BackendError": 500, "CatalogError": 500, "busy": 503}
_MATCH_ID = re.compile(r"^[0-9a-f]{8,64}$")

SearchFn = Callable[[str, int], list[Any]]  # (query, k) -> ranked items with .sku / .name / .score
Publish = Callable[[str, dict[str, Any]], None]  # (topic suffix under the prefix, message)
EventSink = Callable[[dict[str, Any]], None]


def confirm_message(c: Confirmation, *, device: str, name: str, shown: ShownMatch | None = None) -> dict[str, Any]:
    """``<prefix>/<camera>/confirm``: a shopper confirmed (or corrected) what a match showed.

    ``catalog_version`` has the type the match message gave it (an integer from the catalog store)
    and ``item_id`` names the match's item, when the match it answers (``shown``) is known.
    """
    version: Any = shown.catalog_version if shown is not None else c.catalog_version
    return {"schema": CONFIRM_SCHEMA, "id": c.id, "ts": round(c.ts, 6), "device": device, "camera": c.camera,
            "roi": c.roi, "match_id": c.match_id, "view_id": c.view_id,
            "item_id": shown.item_id if shown is not None else None, "sku": c.sku, "name": name,
            "source": c.source, "decision": c.decision, "predicted_sku": c.predicted_sku,
            "corrected": c.corrected, "crop_kept": c.crop is not None, "catalog_version": version}


class KioskActions:
    """The page's three verbs behind a command router; see the module docstring."""

    def __init__(self, *, hub: KioskHub, cards: ProductCards, confirmations: ConfirmationStore, publish: Publish,
                 device: str, search: SearchFn | None = None, recommender: Any | None = None,
                 max_bytes: int = 16 * 1024, token: str | None = None,
                 results: int = 8, recommendations: int = 4) -> None:
        self.hub = hub
        self.cards = cards
        self.confirmations = confirmations
        self.device = device
        self.search_k = results
        self.recommend_k = recommendations
        self._publish = publish
        self._search = search
        self._recommender = recommender
        self._on_event: EventSink = lambda _e: None
        self.on_confirmed: Callable[[Confirmation, Any], None] | None = None  # (it, crop): edge.pipeline.confirm
        self.router = CommandRouter(prefix="kiosk", reply=lambda _t, _b: None, max_bytes=max_bytes, token=token)
        for verb, fn in (("search", self._cmd_search), ("recommend", self._cmd_recommend),
                         ("confirm", self._cmd_confirm)):
            self.router.register(verb, fn)

    def set_event_sink(self, sink: EventSink) -> None:
        """Where a confirmation's new page state goes (the screen pushes it to the page)."""
        self._on_event = sink

    def handle(self, verb: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, reply) for one page request; the reply is the router's ``{ok, result | error}``."""
        if len(body) > self.router.max_bytes:
            return self.too_large(len(body))
        reply = self.router.handle(verb, body)
        if reply.get("ok"):
            return 200, reply
        if reply.get("code") in SERVER_SIDE:  # the device failed (e.g. "database is locked"), not the page
            return SERVER_SIDE[reply["code"]], reply
        return (403 if "unauthorised" in str(reply.get("error")) else 400), reply

    def too_large(self, size: int) -> tuple[int, dict[str, Any]]:
        """The refusal of a request body over the size limit (``kiosk_screen.max_request_bytes``)."""
        self.router.counts["error"] += 1
        return 413, {"id": None, "ok": False, "code": "CommandError",
                     "error": f"request of {size} bytes exceeds the limit of {self.router.max_bytes} bytes"}

    # -- recommendations (also pushed to the page after a known decision) --------------------------

    def recommendations(self, sku: str) -> dict[str, Any]:
        """``together`` and ``similar`` cards for a product (empty lists when there is no recommender)."""
        out: dict[str, Any] = {"sku": sku, "together": [], "similar": []}
        if self._recommender is None or self.recommend_k <= 0:
            return out
        n = self.recommend_k + len(self.cards.hidden)
        for kind in ("together", "similar"):
            try:
                recs = self._recommender.recommend(sku, kind=kind, k=n + len(out["together"]))
            except InputError as e:  # e.g. no product vectors: "similar" is off, the rest still shows
                log.debug("kiosk recommendations skipped", extra={"kind": kind, "error": e.message})
                continue
            if kind == "together":  # only real complements, else the popular ones; never "similar" fill-ins
                recs = [r for r in recs if r.source == "together"] or [r for r in recs if r.source == "popular"]
            seen = {sku} | {c["sku"] for c in out["together"]}
            cards: list[dict[str, Any]] = []
            for r in recs:
                card = None if r.sku in seen else self.cards.card(r.sku)  # None: not a catalog product
                if card is not None:
                    cards.append({**card, "source": r.source})
                if len(cards) >= self.recommend_k:
                    break
            out[kind] = cards
        return out

    def recommendation_event(self, match_id: str, sku: str) -> dict[str, Any]:
        return {"type": "recs", "match_id": match_id, **self.recommendations(sku)}

    # -- handlers ----------------------------------------------------------------------------------

    def _cmd_search(self, args: dict[str, Any]) -> dict[str, Any]:
        # "text", as cmd/search has it (the documented key); "q", the page's first name for it, still works
        q = require_str(args, "text" if "text" in args or "q" not in args else "q", max_len=MAX_QUERY_CHARS).strip()
        k = _int_arg(args, "k", self.search_k, 1, 24)
        if self._search is None:
            raise CommandError("search is not available on this device", hint="load the catalog with a text index")
        items = self._search(q, k + len(self.cards.hidden))
        return {"query": q, "results": self.cards.cards(items, k)}

    def _cmd_recommend(self, args: dict[str, Any]) -> dict[str, Any]:
        sku = self._catalog_sku(args)
        return self.recommendations(sku)

    def _cmd_confirm(self, args: dict[str, Any]) -> dict[str, Any]:
        match_id = require_str(args, "match_id", max_len=64)
        if not _MATCH_ID.match(match_id):
            raise CommandError(f"match_id {match_id!r:.70} is not a match id", hint="send the id of a match message")
        sku = self._catalog_sku(args)
        source = args.get("source", "candidate")
        if source not in SOURCES:
            raise CommandError(f"source must be one of {SOURCES}, got {source!r:.40}")
        shown = self.hub.match(match_id)
        if shown is None:
            raise CommandError(f"match {match_id} is not one the screen showed recently",
                               hint="confirm what the screen shows now")
        c = self._keep(shown, sku, str(source))
        if self.on_confirmed is not None:  # queued, never waited for: the tap is answered first
            self.on_confirmed(c, shown.crop)
        card = self.cards.card(sku)
        msg = confirm_message(c, device=self.device, name=card["name"] if card else sku, shown=shown)
        self._publish(f"{shown.camera}/confirm", msg)
        log.info("kiosk confirmation", extra={"sku": sku, "match_id": match_id, "corrected": c.corrected})
        if (event := self.hub.on_confirmed(shown, sku)) is not None:
            self._on_event(event)
        # shown: the screen now shows the confirmed product (its badge says so; the page adds no toast)
        return {"confirm_id": c.id, "match_id": match_id, "view_id": c.view_id, "item_id": shown.item_id,
                "sku": sku, "shown": event is not None}

    def _keep(self, shown: ShownMatch, sku: str, source: str) -> Confirmation:
        return self.confirmations.add(match_id=shown.match_id, view_id=shown.view_id, camera=shown.camera,
                                      roi=shown.roi, sku=sku, decision=shown.decision,
                                      predicted_sku=shown.predicted_sku, source=source, crop=shown.crop,
                                      catalog_version=shown.catalog_version, ts=time.time())

    def _catalog_sku(self, args: dict[str, Any]) -> str:
        sku = require_str(args, "sku", max_len=128)
        if sku in self.cards.hidden or self.cards.catalog.get(sku) is None:
            raise CommandError(f"sku {sku!r} is not a product in the catalog", hint="pick a product shown on the page")
        return sku


def _int_arg(args: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = args.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise CommandError(f"{key!r} must be an integer from {lo} to {hi}, got {v!r:.40}")
    return v
