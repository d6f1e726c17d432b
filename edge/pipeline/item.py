"""Kiosk items: one answer per item held up, pooled over every view of it.

An *item* lasts from the tray leaving empty until it is empty again (a view whose frames show
the catalog's ``decision.empty_sku`` entry). A shopper who turns the product shows several
*views* of one item (the gate's ``new_view``); each view's frames add evidence instead of
starting a new answer:

- a view's product scores are the mean over its frames (a sku missing from a frame's ranked
  list gets that frame's lowest listed score: a bound, never an invention);
- the item's score of a product is the mean over its views (each view counts once, however
  long it was held);
- the item names its top product when the pooled top score clears ``threshold`` *and* beats
  the next product by ``margin`` *and* it is the top product of at least half the views on their
  own (chosen for a target share of wrong answers by
  ``storelens calibrate --max-wrong``), else it is ``unknown`` — with its ranked candidates
  either way, which the kiosk screen shows as a pick list.

A product swapped for another without emptying the tray stays one item (the kiosk cannot tell a
swap from a turn): its views then disagree, and the answer turns ``unknown`` (with both products in
the pick list) until the new product's views outweigh the old. (A rule that started
a new item when a view alone named another product split 7 of 296 benchmark sessions of *one*
product into two items, each time on a wrongly named view.)

Published: the item's first answer once its first view has ``min_frames`` frames, an update
with the same ``item_id`` whenever the answer changes (product, or unknown <-> known), and a
``final`` update when the tray empties; the empty tray itself is published as before (a
decision naming the empty entry, no ``item_id``). Heartbeats re-send the newest decision.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

from edge.core.types import Candidate
from edge.pipeline.vote import Decision, DecisionKind, VoteParams

POOL_K = 20  # candidates kept per pooled item (a superset of top_k: the pick list and the margin)
# A known answer must be the top product of at least half the item's views on their own: pooled scores of two
# different products can otherwise crown a third that no view showed (red + green views -> "yellow")
MIN_VIEW_AGREEMENT = 0.5


@dataclass(slots=True)
class _View:
    """One view's frames: per-frame {sku: score} and the names seen."""

    frames: list[dict[str, float]]

    def mean(self) -> dict[str, float]:
        skus = {s for f in self.frames for s in f}
        floors = [min(f.values()) for f in self.frames]
        return {s: sum(f.get(s, lo) for f, lo in zip(self.frames, floors, strict=True)) / len(self.frames)
                for s in skus}


def pool(views: Sequence[dict[str, float]]) -> list[tuple[str, float]]:
    """Mean of each product's per-view scores (a view without it: its lowest score), best first."""
    skus = {s for v in views for s in v}
    floors = [min(v.values()) for v in views]
    pooled = {s: sum(v.get(s, lo) for v, lo in zip(views, floors, strict=True)) / len(views) for s in skus}
    return sorted(pooled.items(), key=lambda t: (-t[1], t[0]))


def item_label(ranked: Sequence[tuple[str, float]], threshold: float, margin: float) -> str | None:
    """The pooled top sku when it clears ``threshold`` and leads the next by ``margin``; else None (unknown)."""
    if not ranked or ranked[0][1] < threshold:
        return None
    if len(ranked) > 1 and ranked[0][1] - ranked[1][1] < margin:
        return None
    return ranked[0][0]


class ItemVoter:
    """The kiosk voter of one region: same calls as :class:`~edge.pipeline.vote.RegionVoter` (``reset`` on a
    new view, ``add`` per embedded frame, ``heartbeat``), but ``add`` returns a list (an item's final update
    and the empty tray can come from one frame)."""

    def __init__(self, *, camera: str, roi: str, params: VoteParams, items_span_views: bool = True) -> None:
        self.camera, self.roi, self.params = camera, roi, params
        self.items_span_views = items_span_views  # False: no empty-tray entry to end an item, so a view is an item
        self._names: dict[str, str] = {}
        self._view = _View([])
        self._view_id = uuid.uuid4().hex[:16]
        self._views: list[dict[str, float]] = []  # closed views of the open item
        self._item_id: str | None = None
        self._item_views = 0
        self._current: Decision | None = None
        self._published_at: float | None = None
        self._empty_shown = False

    @property
    def current(self) -> Decision | None:
        return self._current

    @property
    def item_id(self) -> str | None:
        """The open item's id (None while the tray is empty or nothing was decided yet)."""
        return self._item_id

    def set_params(self, params: VoteParams) -> None:
        self.params = params

    def reset(self) -> str:
        """A new view (the gate's ``new_view``): the old view's frames join the open item; the new view's id."""
        self._close_view()
        if not self.items_span_views:
            self._item_id, self._views = None, []
        self._view_id = uuid.uuid4().hex[:16]
        return self._view_id

    def add(self, candidates: Sequence[Candidate], *, ts: float, now: float) -> list[Decision]:
        """Vote one frame of the current view; the decisions to publish (possibly none)."""
        if candidates:
            self._view.frames.append({c.sku: float(c.score) for c in candidates})
            for c in candidates:
                self._names.setdefault(c.sku, c.name)
        n = len(self._view.frames)
        if n < self.params.min_frames:
            return self._heartbeat(now)
        current = self._view.mean()
        view_top = pool([current])
        if view_top and view_top[0][0] == self.params.empty_sku:
            return self._tray_empty(view_top, n, ts, now)
        if self._item_id is None:
            self._item_id, self._empty_shown, self._views = uuid.uuid4().hex[:16], False, []
        views = [*self._views, current]
        ranked = [(s, v) for s, v in pool(views) if s != self.params.empty_sku][:POOL_K]
        top = ranked[0][0] if ranked else None
        agree = sum(pool([v])[0][0] == top for v in views) / len(views)
        label = item_label(ranked, self.params.threshold, self.params.margin) if agree >= MIN_VIEW_AGREEMENT else None
        decided = self._decision(ranked, label, frames=n, ts=ts, views=len(views), agreement=agree)
        prev = self._current
        if prev is None or prev.item_id != self._item_id or (prev.decision, prev.sku) != (decided.decision,
                                                                                          decided.sku):
            return [self._publish(decided, now)]
        self._current = decided  # fresher scores for the next heartbeat or the final update
        return self._heartbeat(now)

    def heartbeat(self, now: float) -> Decision | None:
        """Re-publish the newest decision when ``heartbeat_s`` passed since the last publish."""
        if self._current is None or self._published_at is None or \
                now - self._published_at < self.params.heartbeat_s:
            return None
        return self._publish(replace(self._current, heartbeat=True, changed=False), now)

    # -- internals ---------------------------------------------------------------------------------

    def _heartbeat(self, now: float) -> list[Decision]:
        d = self.heartbeat(now)
        return [d] if d is not None else []

    def _close_view(self) -> None:
        if self._item_id is not None and len(self._view.frames) >= self.params.min_frames:
            mean = self._view.mean()
            if pool([mean])[0][0] != self.params.empty_sku:
                self._views.append(mean)
        self._view = _View([])

    def _tray_empty(self, view_top: list[tuple[str, float]], n: int, ts: float, now: float) -> list[Decision]:
        out = [self._finish(now)] if self._item_id is not None else []
        if not self._empty_shown:
            self._empty_shown = True
            out.append(self._publish(self._decision(view_top[:POOL_K], self.params.empty_sku, frames=n, ts=ts,
                                                    views=1, item=False), now))
        return out or self._heartbeat(now)

    def _finish(self, now: float) -> Decision:
        """End the open item: its last answer again, ``final``."""
        assert self._current is not None and self._current.item_id == self._item_id
        self._item_id, self._views = None, []
        return self._publish(replace(self._current, final=True, heartbeat=False, changed=True), now)

    def _decision(self, ranked: Sequence[tuple[str, float]], label: str | None, *, frames: int, ts: float,
                  views: int, agreement: float = 1.0, item: bool = True) -> Decision:
        if label is not None:  # the named product first, then the rest by score
            ranked = sorted(ranked, key=lambda t: t[0] != label)
        cands = tuple(Candidate(s, self._names.get(s, s), round(v, 4)) for s, v in ranked[: self.params.top_k])
        kind: DecisionKind = "known" if label is not None else "unknown"
        return Decision(camera=self.camera, roi=self.roi, decision=kind, candidates=cands, frames=frames,
                        agreement=round(agreement, 4), ts=ts, view_id=self._view_id,
                        item_id=self._item_id if item else None, views=views)

    def _publish(self, d: Decision, now: float) -> Decision:
        self._current, self._published_at = d, now
        return d
