"""What the kiosk screen shows, built from the runtime's match messages: one state per screen.

:class:`KioskHub` turns a ``match`` message (plus the region crop and the view id, which the
runtime knows and the message does not carry) into a ``decision`` event for the page:

- ``empty``: the decision is the catalog's empty-tray entry (``decision.empty_sku``), or an
  unknown view whose best candidate is that entry — the screen says "nothing on the tray";
- ``known``: the product's card, and the other candidates ranked (the pick list under "Not
  this product?", always shown so the right product is one tap away);
- ``unknown``: the top candidates as cards ("is it one of these?").

Candidates are cards of catalog products only (a sku the catalog no longer holds is left out;
a known answer whose product is gone shows as unknown). Every event names its ``item``: the
runtime's ``item_id`` (one item on the tray, however many views and updates it gets) or, from a
runtime that sends none, the view id; the page replaces the answer of the same item in place.

It remembers the last few decisions (with their crops) so a confirmation can name the match
it answers, and the items a shopper confirmed: later decisions and heartbeats of a confirmed
item keep showing the confirmed product (the shopper's word wins for that item).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.kiosk.cards import ProductCards

RECENT_MATCHES = 32  # decisions a confirmation may still answer (with their crops in memory)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShownMatch:
    """A decision the screen showed, kept so that a tap can confirm it."""

    match_id: str
    view_id: str | None
    camera: str
    roi: str
    decision: str
    predicted_sku: str | None
    catalog_version: int | str | None  # as the match message carried it
    crop: np.ndarray | None
    item_id: str | None = None  # the runtime's item (None from a runtime without items)

    @property
    def item(self) -> str | None:
        """What identifies the shopper's item: the item id, else the view id."""
        return self.item_id or self.view_id


class KioskHub:
    """Builds page events from decisions for one camera; thread-safe (runtime thread in, server thread out)."""

    def __init__(self, cards: ProductCards, *, camera: str | None, empty_sku: str, candidates: int = 4) -> None:
        self.cards = cards
        self.camera = camera  # None: the first camera a decision comes from
        self.empty_sku = empty_sku
        self.candidates = candidates
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, ShownMatch] = OrderedDict()
        self._confirmed: OrderedDict[str, str] = OrderedDict()  # item (or view) id -> confirmed sku
        self._current: dict[str, Any] | None = None

    @property
    def current(self) -> dict[str, Any] | None:
        """The last decision event (what a page that connects now is shown first)."""
        with self._lock:
            return self._current

    def match(self, match_id: str) -> ShownMatch | None:
        with self._lock:
            return self._recent.get(match_id)

    def on_match(self, msg: dict[str, Any], *, crop: np.ndarray | None = None,
                 view_id: str | None = None) -> dict[str, Any] | None:
        """The page event for a ``match`` message, or None when it is not this screen's camera."""
        received = time.time()
        camera = str(msg.get("camera", ""))
        with self._lock:
            if self.camera is None:
                self.camera = camera
            if camera != self.camera:
                return None
        cands = list(msg.get("candidates") or [])
        top = str(cands[0]["sku"]) if cands else None
        item_id = msg.get("item_id")
        shown = ShownMatch(match_id=str(msg["id"]), view_id=view_id, camera=camera, roi=str(msg.get("roi", "")),
                           decision=str(msg.get("decision")), predicted_sku=top if msg.get("decision") == "known"
                           else None, catalog_version=msg.get("catalog_version"),
                           crop=None if crop is None else np.array(crop, copy=True),
                           item_id=None if item_id is None else str(item_id))
        with self._lock:
            confirmed = self._confirmed.get(shown.item) if shown.item else None
        event = self._event(shown, cands, confirmed_sku=confirmed, heartbeat=bool(msg.get("heartbeat")),
                            ts=float(msg.get("ts", received)), emitted=received)
        with self._lock:
            self._recent[shown.match_id] = shown
            while len(self._recent) > RECENT_MATCHES:
                self._recent.popitem(last=False)
            self._current = event
        return event

    def on_confirmed(self, shown: ShownMatch, sku: str) -> dict[str, Any] | None:
        """Remember that the shopper confirmed ``sku`` for this item; the event that now shows it, or None
        when the screen has moved on to another item meanwhile (the confirmation still counts)."""
        with self._lock:
            if shown.item:
                self._confirmed[shown.item] = sku
                while len(self._confirmed) > RECENT_MATCHES:
                    self._confirmed.popitem(last=False)
            cur = self._current
            if cur is not None and cur.get("match_id") != shown.match_id and \
                    (shown.item is None or cur.get("item") != shown.item):
                return None
        now = time.time()
        event = self._event(shown, [], confirmed_sku=sku, heartbeat=False, ts=now, emitted=now)
        with self._lock:
            self._current = event
        return event

    def _event(self, shown: ShownMatch, cands: list[dict[str, Any]], *, confirmed_sku: str | None,
               heartbeat: bool, ts: float, emitted: float) -> dict[str, Any]:
        """``emitted_ms``: when the decision reached the screen (the page's render time is measured from it)."""
        top = str(cands[0]["sku"]) if cands else None
        kind, product = "unknown", None
        if confirmed_sku is not None:
            kind, product = "known", self.cards.card(confirmed_sku)
        elif top == self.empty_sku or (shown.decision == "known" and top is None):
            kind = "empty"
        elif shown.decision == "known" and top is not None:
            product = self.cards.card(top)  # None: the product left the catalog since; ask the shopper
            kind = "known" if product is not None else "unknown"
        shown_sku = product["sku"] if product else None
        picks = [c for c in (self.cards.card(str(o["sku"]), score=o.get("score")) for o in cands
                             if str(o["sku"]) != shown_sku) if c is not None][: self.candidates]
        return {"type": "decision", "match_id": shown.match_id, "view_id": shown.view_id, "item": shown.item,
                "camera": shown.camera, "roi": shown.roi, "kind": kind, "product": product,
                "confirmed": confirmed_sku is not None, "candidates": [] if kind == "empty" or confirmed_sku else picks,
                "heartbeat": heartbeat, "ts": round(ts, 3), "emitted_ms": round(emitted * 1000, 1)}
