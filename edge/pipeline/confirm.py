"""Confirmations in: kiosk taps, ``cmd/confirm`` and point-of-sale scans, each learned from (issue 18).

Three ways a product is confirmed for a view the runtime decided:

- the kiosk screen's ``confirm`` (:class:`~edge.kiosk.actions.KioskActions`, with the crop it showed);
- ``<prefix>/cmd/confirm`` from a store system: ``{"match_id" | "view", "sku"}``, answered with
  what became of the crop (learned, duplicate, held);
- ``<prefix>/events/scan`` from the point of sale: ``{"barcode", "ts"}``; the barcode names the
  product (the catalog's ``barcode``, leading zeros ignored) and ``ts`` (unix seconds or ISO 8601)
  the view that was on the tray then (:meth:`ViewLog.at`). A scan that arrives before its view
  has decided waits up to ``learning.scan_window_s`` for it.

Each is validated like any command (:class:`~edge.comms.commands.CommandRouter`: size, JSON
object, the shared token, known keys) and handed to :class:`~edge.catalog.learning.Learner`.
Kiosk taps and scans are learned on one worker thread of their own, so neither the kiosk's server
nor paho's network thread waits for an embedding or an index swap. :func:`attach_learning`
wires it all to a :class:`~edge.pipeline.loop.Runtime`; counts go to ``status.learning``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.catalog.learning import Learner
from edge.comms.commands import CommandRouter, reject_unknown_keys, require_str
from edge.core.errors import CommandError, StoreLensError
from edge.core.learning_settings import LearningSettings

if TYPE_CHECKING:
    from edge.pipeline.loop import Runtime

log = logging.getLogger("storelens.confirm")

RECENT_VIEWS = 32  # views (with their crops) a confirmation or a scan may still name
PENDING_SCANS = 16  # scans waiting for their view to decide
LEAD_S = 2.0  # a scan may come this long before its view's first decision (the vote takes a few frames)
LEARN_QUEUE = 32  # confirmations and scans waiting for the learning thread; more are refused (counted "busy")
SCAN_MAX_BYTES = 4096
BARCODE_MAX_CHARS = 64


@dataclass(frozen=True, kw_only=True)
class SeenView:
    """A view (an item shown) the runtime decided, with the crop it decided on."""

    view_id: str
    region: str  # camera/roi
    match_id: str  # its latest match message
    sku: str | None  # top candidate of that decision
    decision: str
    first_ts: float  # capture time of its first decision's frame
    last_ts: float
    crop: np.ndarray | None


class ViewLog:
    """The last :data:`RECENT_VIEWS` views decided, by view id, match id and time; thread-safe."""

    def __init__(self, *, empty_sku: str, max_views: int = RECENT_VIEWS) -> None:
        self.empty_sku = empty_sku
        self.max_views = max_views
        self._lock = threading.Lock()
        self._views: OrderedDict[str, SeenView] = OrderedDict()
        self._matches: OrderedDict[str, str] = OrderedDict()  # match id -> view id

    def on_decision(self, msg: dict[str, Any], crop: np.ndarray | None) -> None:
        """A published match message (the runtime's decision listener).

        The view keeps the crop of its decision; a heartbeat's crop is ignored (issue 28, finding 10: it
        may be a later frame, a hand or the next item, and a scan would teach the catalog that).
        """
        view_id = msg.get("view_id")
        if not view_id:
            return
        cands = msg.get("candidates") or []
        ts = float(msg.get("ts", time.time()))
        heartbeat = bool(msg.get("heartbeat"))  # never its crop: a heartbeat re-sends an old frame's decision
        kept = None if crop is None or heartbeat else np.array(crop, copy=True)
        with self._lock:
            old = self._views.pop(view_id, None)
            if (kept is None or heartbeat) and old is not None:
                kept = old.crop
            region = f"{msg.get('camera', '')}/{msg.get('roi', '')}"
            self._views[view_id] = SeenView(
                view_id=view_id, region=region, match_id=str(msg["id"]), decision=str(msg.get("decision")),
                sku=str(cands[0]["sku"]) if cands else None, first_ts=old.first_ts if old else ts,
                last_ts=max(ts, old.last_ts) if old else ts, crop=kept)
            self._matches[str(msg["id"])] = view_id
            while len(self._views) > self.max_views:
                self._views.popitem(last=False)
            while len(self._matches) > 4 * self.max_views:
                self._matches.popitem(last=False)

    def by_view(self, view_id: str) -> SeenView | None:
        with self._lock:
            return self._views.get(view_id)

    def by_match(self, match_id: str) -> SeenView | None:
        with self._lock:
            view_id = self._matches.get(match_id)
            return None if view_id is None else self._views.get(view_id)

    def at(self, ts: float, *, window_s: float) -> SeenView | None:
        """The product view on the tray at ``ts`` (None: none known yet); CommandError when two regions had one.

        A view is on the tray from its first decision until its region's next view; a product view that
        decided up to :data:`LEAD_S` after ``ts`` was already there (the vote takes a few frames); when
        the next view is the empty tray, a scan up to ``window_s`` after still belongs to the product
        (the cashier lifts it off, then scans).
        """
        with self._lock:
            views = sorted(self._views.values(), key=lambda v: v.first_ts)
        found = []
        for region in dict.fromkeys(v.region for v in views):
            mine = [v for v in views if v.region == region]
            i = max((j for j, v in enumerate(mine) if v.first_ts <= ts), default=-1)
            if i >= 0 and self._is_product(mine[i]):
                found.append(mine[i])
            elif i + 1 < len(mine) and mine[i + 1].first_ts <= ts + LEAD_S and self._is_product(mine[i + 1]):
                found.append(mine[i + 1])
            elif prev := [j for j in range(i) if self._is_product(mine[j])]:
                if ts - mine[prev[-1] + 1].first_ts <= window_s:
                    found.append(mine[prev[-1]])
        if len(found) > 1:
            raise CommandError(f"{len(found)} regions showed a product at {ts}: the scan is ambiguous",
                               hint="send cmd/confirm with the view instead")
        return found[0] if found else None

    def _is_product(self, v: SeenView) -> bool:
        return v.sku != self.empty_sku and v.crop is not None


class ConfirmIntake:
    """Confirmations from the three sources to the learner of the runtime's current store."""

    def __init__(self, *, store: Callable[[], Any], settings: LearningSettings, views: ViewLog,
                 on_learned: Callable[[], None] = lambda: None, token: str | None = None) -> None:
        self._store = store
        self.settings = settings
        self.views = views
        self.counts: Counter[str] = Counter()
        self._on_learned = on_learned
        self._learner: Learner | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[str, float, float]] = []  # (barcode, ts, received)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learning")
        self._queue_lock = threading.Lock()
        self._queued = 0  # jobs submitted to the pool and not finished (bounded by LEARN_QUEUE)
        self.events = CommandRouter(prefix="events", reply=lambda _t, _b: None, max_bytes=SCAN_MAX_BYTES,
                                    token=token)
        self.events.register("scan", self._scan)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            if self._learner is not None:
                self._learner.close()

    def learner(self) -> Learner:
        """The learner of the store the runtime matches with now (a reload may have swapped it)."""
        store = self._store()
        with self._lock:
            if self._learner is None or self._learner.store is not store:
                if self._learner is not None:
                    self._learner.close()
                self._learner = Learner(store, self.settings)
            return self._learner

    # ---- the sources ----------------------------------------------------------------------

    def confirm_command(self, args: dict[str, Any]) -> dict[str, Any]:
        """``cmd/confirm``: ``{"match_id": ...}`` or ``{"view": ...}`` and ``"sku"``; learned before the reply."""
        reject_unknown_keys(args, ("match_id", "view", "sku"), verb="confirm")
        if ("match_id" in args) == ("view" in args):
            raise CommandError("confirm needs exactly one of match_id or view",
                               hint='e.g. {"view": "<view_id of a match>", "sku": "4011"}')
        sku = require_str(args, "sku", max_len=128)
        if "view" in args:
            view = self.views.by_view(require_str(args, "view", max_len=64))
        else:
            view = self.views.by_match(require_str(args, "match_id", max_len=64))
        if view is None or view.crop is None:
            raise CommandError("that view is not one this device still holds a crop of",
                               hint=f"confirm one of the last {RECENT_VIEWS} views, soon after it was decided")
        return {"view_id": view.view_id, "match_id": view.match_id, **self._learn(sku, view.crop, "command",
                                                                                   view.view_id)}

    def on_kiosk_confirm(self, confirmation: Any, crop: np.ndarray | None) -> None:
        """The kiosk screen's confirm (its server thread): learned on the worker thread."""
        if crop is None:
            self.counts["no_crop"] += 1
            return
        self._submit(self._quietly, confirmation.sku, crop, "kiosk", confirmation.view_id or confirmation.id)

    def on_scan_message(self, _topic: str, payload: bytes, _props: Any = None) -> None:
        """``events/scan`` (paho's network thread): checked and learned on the worker thread."""
        self.counts["scans"] += 1
        if len(payload) > SCAN_MAX_BYTES:
            self.counts["refused"] += 1
            log.warning("scan event refused: %d bytes", len(payload))
            return
        self._submit(self._handle_scan, payload)

    def on_decision(self, msg: dict[str, Any], crop: np.ndarray | None) -> None:
        """The runtime's decision listener: remember the view; a scan waiting for it may now match."""
        self.views.on_decision(msg, crop)
        if self._pending and not msg.get("heartbeat"):
            self._submit(self._retry_pending)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn`` for the learning thread; past :data:`LEARN_QUEUE` waiting jobs it is refused and counted
        (a flood of forged scans must not grow memory without bound)."""
        with self._queue_lock:
            if self._queued >= LEARN_QUEUE:
                self.counts["busy"] += 1
                if self.counts["busy"] == 1 or self.counts["busy"] % 1000 == 0:
                    log.warning("learning queue full: confirmations and scans refused",
                                extra={"busy": self.counts["busy"]})
                return
            self._queued += 1
        try:
            self._pool.submit(fn, *args).add_done_callback(self._done)
        except RuntimeError:  # shut down
            self._done(None)

    def _done(self, _future: Any) -> None:
        with self._queue_lock:
            self._queued -= 1

    # ---- work on the learning thread ------------------------------------------------------

    def _handle_scan(self, payload: bytes) -> None:
        reply = self.events.handle("scan", payload)
        if not reply.get("ok"):
            self.counts["refused"] += 1

    def _scan(self, args: dict[str, Any]) -> dict[str, Any]:
        reject_unknown_keys(args, ("barcode", "ts"), verb="scan")
        barcode = require_str(args, "barcode", max_len=BARCODE_MAX_CHARS).strip()
        ts = parse_ts(args.get("ts"))
        sku = self.learner().sku_for_barcode(barcode)
        if sku is None:
            self.counts["unknown_barcode"] += 1
            raise CommandError(f"barcode {barcode!r} is no product's in the catalog",
                               hint="check the catalog's barcodes")
        if not self._match_scan(sku, barcode, ts):
            with self._lock:
                self._pending = [*self._pending, (barcode, ts, time.time())][-PENDING_SCANS:]
        return {"sku": sku}

    def _match_scan(self, sku: str, barcode: str, ts: float) -> bool:
        try:
            view = self.views.at(ts, window_s=self.settings.scan_window_s)
        except CommandError:
            self.counts["ambiguous"] += 1
            raise
        if view is None or view.crop is None:
            return False
        self._learn(sku, view.crop, "scan", view.view_id)
        return True

    def _retry_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        keep = []
        for barcode, ts, received in pending:
            sku = self.learner().sku_for_barcode(barcode)
            try:
                if sku is not None and self._match_scan(sku, barcode, ts):
                    continue
            except StoreLensError:
                continue
            if time.time() - received <= self.settings.scan_window_s:
                keep.append((barcode, ts, received))
            else:
                self.counts["unmatched"] += 1
        with self._lock:
            self._pending = [*keep, *self._pending][-PENDING_SCANS:]

    def _quietly(self, sku: str, crop: np.ndarray, source: str, ref: str | None) -> None:
        try:
            self._learn(sku, crop, source, ref)
        except StoreLensError as e:
            self.counts["refused"] += 1
            log.warning("confirmation not learned", extra={"sku": sku, "source": source, "error": str(e)})
        except Exception:
            self.counts["errors"] += 1
            log.exception("learning from a confirmation failed", extra={"sku": sku, "source": source})

    def _learn(self, sku: str, crop: np.ndarray, source: str, ref: str | None) -> dict[str, Any]:
        learner = self.learner()
        if learner.store.catalog.get(sku) is None:
            raise CommandError(f"sku {sku!r} is not in the catalog", hint="confirm a product the catalog holds")
        res = learner.learn(sku, crop, source=source, ref=ref)
        self.counts[res.outcome] += 1
        self.counts[f"from_{source}"] += 1
        if res.outcome == "learned":
            self._on_learned()
        return res.to_dict()

    def stats(self) -> dict[str, Any]:
        """``status.learning``: this run's counts and the catalog's learning totals."""
        try:
            totals = self.learner().stats()
        except StoreLensError:
            totals = {}
        return {"enabled": True, "sources": list(self.settings.sources), "this_run": dict(self.counts),
                "pending_scans": len(self._pending), **totals}


def parse_ts(v: Any) -> float:
    """A scan's time: unix seconds, or an ISO 8601 string (UTC unless it says)."""
    if isinstance(v, bool):
        raise CommandError("'ts' must be unix seconds or an ISO 8601 time")
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            when = dt.datetime.fromisoformat(v.strip())
        except ValueError as e:
            raise CommandError(f"'ts' {v!r:.40} is not an ISO 8601 time", hint='e.g. "ts": 1764680000.5') from e
        return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
    raise CommandError("'ts' must be unix seconds or an ISO 8601 time", hint='e.g. "ts": 1764680000.5')


def attach_learning(rt: Runtime) -> ConfirmIntake | None:
    """Wire confirmations to a runtime whose matcher is the catalog store (call before ``rt.start()``)."""
    s = rt.settings.learning
    if not s.enabled or getattr(rt.matcher, "writer", None) is None:
        return None
    token = rt.settings.mqtt.command_token.get_secret_value() if rt.settings.mqtt.command_token else None
    intake = ConfirmIntake(store=lambda: rt.matcher, settings=s, token=token, on_learned=rt.publish_status,
                           views=ViewLog(empty_sku=rt.settings.decision.empty_sku))
    rt.decision_listeners.append(intake.on_decision)
    rt.extra_status["learning"] = intake.stats
    if "command" in s.sources:
        rt.router.register("confirm", intake.confirm_command)
    if "scan" in s.sources and rt.link is not None:
        rt.link.add_topic_handler(rt.link.topic("events/scan"), intake.on_scan_message, max_bytes=SCAN_MAX_BYTES)
    actions = getattr(rt.screen, "actions", None)
    if "kiosk" in s.sources and actions is not None:
        actions.on_confirmed = intake.on_kiosk_confirm
    return intake
