"""Voting: one decision per region from a sliding window of per-frame search results.

Each frame's ranked candidates get a label: the top sku when it clears the threshold *and*
beats the best other sku by the margin, else ``unknown``. When the window holds at least
``min_frames`` frames and one label has ``agreement`` of them, that label is the region's
decision; candidate scores are aggregated over the window (mean / max / median).

A region emits when its decision changes (the gate's ``new_view`` restarts the window), and
re-publishes the unchanged decision as a heartbeat every ``heartbeat_s`` — never on every frame.
Each decision carries the id of the view it is about (``view_id``). This is the shelf's voter; a
kiosk decides per *item*, its views pooled (:mod:`edge.pipeline.item`), and the decision carries
the item fields defined here.

Shelf regions name an ``expected_sku``: the decision becomes a planogram state — ``ok``
(the expected product), ``empty`` (the catalog's empty-slot entry), ``misplaced`` (another
product) or ``unknown`` — emitted as its own event when that state changes. With a
:class:`PlanogramPrior` (``[shelf]``) a shelf frame votes for the planned product when it scores close
to the top, and for another product (or the bare shelf) at a lower score than the threshold when the
planned one is clearly not there (:func:`planned_label`): the planogram says what should be there.
"""

from __future__ import annotations

import statistics
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from edge.core.config import DecisionSettings
from edge.core.types import Candidate, Thresholds, resolve_thresholds
from edge.pipeline.gate import RegionGate

DecisionKind = Literal["known", "unknown"]
PlanogramState = Literal["ok", "misplaced", "empty", "unknown"]
Aggregate = Literal["mean", "max", "median"]


_DEFAULTS = DecisionSettings()
VIEWS_RECALLED = 32  # decisions of this many recent views are kept for RegionVoter.recall (gate memory is smaller)


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteParams:
    """The ``[decision]`` settings with the thresholds resolved; defaults are the settings' defaults."""

    threshold: float
    margin: float
    window: int = _DEFAULTS.window
    min_frames: int = _DEFAULTS.min_frames
    agreement: float = _DEFAULTS.agreement
    top_k: int = _DEFAULTS.top_k
    heartbeat_s: float = _DEFAULTS.heartbeat_s
    aggregate: Aggregate = _DEFAULTS.aggregate
    empty_sku: str = _DEFAULTS.empty_sku
    source: str = "config"  # where threshold/margin came from: config, calibrated, uncalibrated, stale-calibration

    @classmethod
    def from_settings(cls, d: DecisionSettings, stored: Thresholds | None = None) -> VoteParams:
        """Thresholds by :func:`~edge.core.types.resolve_thresholds`; unset ones get the ``uncalibrated_*`` values."""
        th = resolve_thresholds(d.threshold, d.margin, stored)
        fallback = th.score is None and th.margin is None
        source = ("stale-calibration" if th.source == "stale-calibration" else "uncalibrated") if fallback \
            else th.source
        return cls(window=d.window, min_frames=d.min_frames, agreement=d.agreement,
                   threshold=d.uncalibrated_threshold if th.score is None else th.score,
                   margin=d.uncalibrated_margin if th.margin is None else th.margin,
                   top_k=d.top_k, heartbeat_s=d.heartbeat_s, aggregate=d.aggregate, empty_sku=d.empty_sku,
                   source=source)

    @property
    def calibrated(self) -> bool:
        """False when the fallback ``uncalibrated_*`` values decide (no calibration, none in config)."""
        return self.source not in ("uncalibrated", "stale-calibration")


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """A region's decision, as published (``match`` message; ``planogram`` when ``planogram`` is set)."""

    camera: str
    roi: str
    decision: DecisionKind
    candidates: tuple[Candidate, ...]
    frames: int
    agreement: float
    ts: float  # capture time of the newest frame voted
    heartbeat: bool = False
    changed: bool = True
    expected_sku: str | None = None
    planogram: PlanogramState | None = None
    planogram_changed: bool = False
    view_id: str | None = None  # the view (gate's new_view) this decision is about
    item_id: str | None = None  # kiosk: the item (tray non-empty -> empty) it is about (edge.pipeline.item)
    final: bool = False  # kiosk: the item's last word, published when the tray empties
    views: int = 0  # kiosk: views of the item pooled into this decision

    @property
    def sku(self) -> str | None:
        return self.candidates[0].sku if self.decision == "known" and self.candidates else None


@dataclass(frozen=True, slots=True)
class _Vote:
    label: str | None  # sku, or None for "unknown"
    candidates: tuple[Candidate, ...]
    ts: float


def frame_label(candidates: Sequence[Candidate], threshold: float, margin: float) -> str | None:
    """The sku this frame votes for, or None (unknown): top score >= threshold and top - next-other >= margin."""
    if not candidates or candidates[0].score < threshold:
        return None
    top = candidates[0]
    other = next((c.score for c in candidates[1:] if c.sku != top.sku), None)
    if other is not None and top.score - other < margin:
        return None
    return top.sku


@dataclass(frozen=True, slots=True)
class PlanogramPrior:
    """Shelf: the planogram as a prior on each frame's vote (``shelf.planned_gap``, ``planned_below``,
    ``other_below``); see :func:`planned_label`."""

    gap: float
    below: float = 0.0
    other_below: float | None = None


def planned_label(candidates: Sequence[Candidate], expected: str, threshold: float, margin: float,
                  prior: PlanogramPrior, empty_sku: str | None = None) -> str | None:
    """A shelf frame's vote: the bare shelf when :func:`frame_label` says so (the prior never hides a sold-out
    facing); else the planned sku when it scores >= threshold - ``below`` within ``gap`` of the top; else
    :func:`frame_label`, and when that is unknown, the top sku (another product, or the bare shelf) if it
    scores >= threshold - ``other_below``: the question at a facing is whether the planned product is there,
    not which of all products it is."""
    label = frame_label(candidates, threshold, margin)
    if label is not None and label == empty_sku:
        return label
    score = next((c.score for c in candidates if c.sku == expected), None)
    if score is not None and candidates and score >= threshold - prior.below and \
            candidates[0].score - score <= prior.gap:
        return expected
    if label is None and prior.other_below is not None and candidates and candidates[0].sku != expected and \
            candidates[0].score >= threshold - prior.other_below:
        return candidates[0].sku
    return label


def planogram_state(label: str | None, expected_sku: str, empty_sku: str) -> PlanogramState:
    """A shelf decision's state: its sku (None: unknown) against the planned sku and the empty-slot sku."""
    if label is None:
        return "unknown"
    if label == expected_sku:
        return "ok"
    return "empty" if label == empty_sku else "misplaced"


def _aggregate(scores: list[float], how: Aggregate) -> float:
    if how == "max":
        return max(scores)
    if how == "median":
        return float(statistics.median(scores))
    return sum(scores) / len(scores)


class RegionVoter:
    """The sliding window and the last published decision of one region."""

    def __init__(self, *, camera: str, roi: str, params: VoteParams, expected_sku: str | None = None,
                 prior: PlanogramPrior | None = None) -> None:
        self.camera = camera
        self.roi = roi
        self.params = params
        self.expected_sku = expected_sku
        self.prior = prior  # shelf: the planogram prior of planned_label (None: frame_label only)
        self._window: deque[_Vote] = deque(maxlen=params.window)
        self._current: Decision | None = None
        self._published_at: float | None = None
        self._view_id = uuid.uuid4().hex[:16]
        self._by_view: OrderedDict[str, Decision] = OrderedDict()  # newest decision of recent views (recall)

    @property
    def current(self) -> Decision | None:
        return self._current

    def set_params(self, params: VoteParams) -> None:
        """New thresholds (after a reload); the window is kept unless its size changed."""
        if params.window != self.params.window:
            self._window = deque(self._window, maxlen=params.window)
        self.params = params

    def reset(self) -> str:
        """A new view: forget the old frames (the published decision stays until a new one forms); its id."""
        self._window.clear()
        self._view_id = uuid.uuid4().hex[:16]
        return self._view_id

    def recall(self, view_id: str, *, ts: float, now: float) -> Decision | None:
        """A view came back (the gate's ``returned``: a shopper stepped away) in the frame captured at ``ts``: its
        decision is the region's again, without a new vote, as of ``ts``. Returns it to publish when that changes
        the published decision; raises KeyError for a view this voter decided nothing about (the caller votes it
        anew)."""
        d = replace(self._by_view[view_id], ts=ts)
        self._window.clear()
        self._view_id = view_id
        prev = self._current
        if prev is not None and (prev.decision, prev.sku) == (d.decision, d.sku):
            return None
        moved = d.planogram is not None and (prev is None or prev.planogram != d.planogram)
        return self._publish(d, now, changed=True, planogram_changed=moved)

    def add(self, candidates: Sequence[Candidate], *, ts: float, now: float) -> Decision | None:
        """Vote one frame; return a decision to publish when it changed (or a heartbeat is due)."""
        p = self.params
        label = frame_label(candidates, p.threshold, p.margin) if self.prior is None or self.expected_sku is None \
            else planned_label(candidates, self.expected_sku, p.threshold, p.margin, self.prior, p.empty_sku)
        self._window.append(_Vote(label, tuple(candidates), ts))
        decided = self._decide()
        if decided is None:
            return self.heartbeat(now)
        self._by_view[self._view_id] = decided
        self._by_view.move_to_end(self._view_id)
        while len(self._by_view) > VIEWS_RECALLED:
            self._by_view.popitem(last=False)
        prev = self._current
        changed = prev is None or (prev.decision, prev.sku) != (decided.decision, decided.sku)
        if changed:
            planogram_changed = decided.planogram is not None and (prev is None or prev.planogram != decided.planogram)
            return self._publish(decided, now, changed=True, planogram_changed=planogram_changed)
        self._current = decided  # fresher candidates and ts for the next heartbeat
        return self.heartbeat(now)

    def heartbeat(self, now: float) -> Decision | None:
        """Re-publish the unchanged decision when ``heartbeat_s`` passed since the last publish."""
        if self._current is None or self._published_at is None or now - self._published_at < self.params.heartbeat_s:
            return None
        return self._publish(self._current, now, changed=False, planogram_changed=False, heartbeat=True)

    def _publish(self, d: Decision, now: float, *, changed: bool, planogram_changed: bool,
                 heartbeat: bool = False) -> Decision:
        out = replace(d, heartbeat=heartbeat, changed=changed, planogram_changed=planogram_changed)
        self._current = out
        self._published_at = now
        return out

    def _decide(self) -> Decision | None:
        p = self.params
        n = len(self._window)
        if n < p.min_frames:
            return None
        counts = Counter(v.label for v in self._window)
        best = max(counts.values())
        # Ties go to the label seen most recently: the newest evidence wins.
        label = next(v.label for v in reversed(self._window) if counts[v.label] == best)
        agreement = best / n
        if agreement < p.agreement:
            return None
        candidates = self._ranked(label)
        kind: DecisionKind = "known" if label is not None else "unknown"
        planogram = None if self.expected_sku is None else planogram_state(label, self.expected_sku, p.empty_sku)
        return Decision(camera=self.camera, roi=self.roi, decision=kind, candidates=candidates, frames=n,
                        agreement=round(agreement, 4), ts=self._window[-1].ts, expected_sku=self.expected_sku,
                        planogram=planogram, view_id=self._view_id)

    def _ranked(self, label: str | None) -> tuple[Candidate, ...]:
        scores: dict[str, list[float]] = {}
        names: dict[str, str] = {}
        for v in self._window:
            for c in v.candidates:
                scores.setdefault(c.sku, []).append(c.score)
                names.setdefault(c.sku, c.name)
        ranked = sorted(((sku, _aggregate(s, self.params.aggregate)) for sku, s in scores.items()),
                        key=lambda t: (t[0] != label, -t[1], t[0]))
        return tuple(Candidate(sku, names[sku], round(score, 4)) for sku, score in ranked[: self.params.top_k])


def recall_view(gate: RegionGate, voter: RegionVoter, ts: float, now: float) -> Decision | None:
    """The gate's ``returned`` verdict on the frame captured at ``ts``: the view's earlier decision is the region's
    again (returned to publish when that changed it); a view the voter decided nothing about is voted anew."""
    if gate.returned_key is not None:
        try:
            return voter.recall(gate.returned_key, ts=ts, now=now)
        except KeyError:
            pass
    gate.revote()
    gate.view_key = voter.reset()
    return None
