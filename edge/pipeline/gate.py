"""Frame gating: embed a region only when its view changed (and, at a kiosk, once it is steady).

Each region keeps a 32x32 grey thumbnail (one ``cv2.resize`` of the crop: microseconds, and
the area averaging removes sensor noise). A frame is compared with the previous frame
(motion) and with the reference view (the view last embedded):

- ``unchanged``: the view equals the reference and ``frames_per_view`` frames of it were
  already embedded — the vote for it is complete, skip.
- ``unsteady`` (kiosk): the view is still moving; wait until ``steady_frames`` still frames.
- ``new_view``: first frame of a different view — embed, and the caller restarts the vote.
- ``embed``: another frame of the current view, while its vote window fills.
- ``returned`` (shelf, ``remember`` > 0): the view changed back to one of the last ``remember`` views
  whose vote completed (a shopper stepped away): nothing is embedded, and the caller brings back
  that view's decision (:attr:`RegionGate.returned_key`). Voting the same facing again after every
  passing shopper gave a misread view new chances to become an alert.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np

log = logging.getLogger("storelens.gate")

THUMB = 32
NEVER_STEADY_WARN_S = 5.0  # a kiosk camera whose view never held still this long is said to be so in the log


class GateVerdict(StrEnum):
    NEW_VIEW = "new_view"
    EMBED = "embed"
    UNCHANGED = "unchanged"
    UNSTEADY = "unsteady"
    RETURNED = "returned"

    @property
    def passes(self) -> bool:
        return self in (GateVerdict.NEW_VIEW, GateVerdict.EMBED)


@dataclass(slots=True)
class GateStats:
    seen: int = 0
    embedded: int = 0
    skipped_unchanged: int = 0
    skipped_unsteady: int = 0

    def add(self, other: GateStats) -> None:
        self.seen += other.seen
        self.embedded += other.embedded
        self.skipped_unchanged += other.skipped_unchanged
        self.skipped_unsteady += other.skipped_unsteady

    def to_dict(self) -> dict[str, float]:
        return {"seen": self.seen, "embedded": self.embedded, "skipped_unchanged": self.skipped_unchanged,
                "skipped_unsteady": self.skipped_unsteady,
                "skip_ratio": round(1 - self.embedded / self.seen, 4) if self.seen else 0.0}


def thumbnail(crop: np.ndarray) -> np.ndarray:
    """BGR crop -> float32 (32, 32) grey in [0, 1]."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


class RegionGate:
    """The gate of one region of one camera."""

    def __init__(self, *, change_threshold: float, steady_frames: int, frames_per_view: int,
                 enabled: bool = True, remember: int = 0) -> None:
        self.name = ""  # camera/region, for the log
        self.warn_never_steady_after = 0  # frames; 0 = never warn (watch_never_steady)
        self.change_threshold = change_threshold
        self.steady_frames = steady_frames
        self.frames_per_view = frames_per_view
        self.enabled = enabled
        self.stats = GateStats()
        self._prev: np.ndarray | None = None
        self._ref: np.ndarray | None = None
        self._still = 0  # consecutive frames without motion
        self._embedded_of_view = 0
        self.view_key: str | None = None  # the caller's name for the current view (its vote's view id)
        self.returned_key: str | None = None  # after ``returned``: the key of the view that came back
        self._memory: deque[tuple[np.ndarray, str]] = deque(maxlen=max(1, remember))
        self._remember = remember > 0

    def check(self, crop: np.ndarray) -> GateVerdict:
        self.stats.seen += 1
        if not self.enabled:
            self.stats.embedded += 1
            return GateVerdict.EMBED
        thumb = thumbnail(crop)
        moving = self._prev is None or self._diff(thumb, self._prev) >= self.change_threshold
        self._prev = thumb
        self._still = 0 if moving else self._still + 1
        if self._still < self.steady_frames:
            self.stats.skipped_unsteady += 1
            if self.stats.seen == self.warn_never_steady_after and self.stats.embedded == 0:
                self._warn_never_steady()
            return GateVerdict.UNSTEADY
        if self._ref is None or self._diff(thumb, self._ref) >= self.change_threshold:
            self._leave_view()
            self._ref = thumb
            if (key := self._recall(thumb)) is not None:
                self._embedded_of_view, self.view_key, self.returned_key = self.frames_per_view, key, key
                self.stats.skipped_unchanged += 1
                return GateVerdict.RETURNED
            self._embedded_of_view = 1
            self.view_key = None
            self.stats.embedded += 1
            return GateVerdict.NEW_VIEW
        if self._embedded_of_view < self.frames_per_view:
            self._embedded_of_view += 1
            self.stats.embedded += 1
            return GateVerdict.EMBED
        self.stats.skipped_unchanged += 1
        return GateVerdict.UNCHANGED

    def revote(self) -> None:
        """The view that came back had no decision to bring back: vote it as a new view after all."""
        self._embedded_of_view = 0
        self.view_key = self.returned_key = None

    def _leave_view(self) -> None:
        """Remember the view being left when its vote was complete (once per key: the newest look of it)."""
        if not self._remember or self._ref is None or self.view_key is None or \
                self._embedded_of_view < self.frames_per_view:
            return
        kept = [e for e in self._memory if e[1] != self.view_key]
        self._memory.clear()
        self._memory.extend([*kept, (self._ref, self.view_key)])

    def _recall(self, thumb: np.ndarray) -> str | None:
        """The key of the closest remembered view within ``change_threshold`` of ``thumb`` (None: a new view)."""
        if not self._remember or not self._memory:
            return None
        diff, key = min(((self._diff(thumb, t), k) for t, k in self._memory), key=lambda dk: dk[0])
        return key if diff < self.change_threshold else None

    def watch_never_steady(self, name: str, *, after: int) -> None:
        """Warn once (naming ``name``) when ``after`` frames were seen and no view ever held still."""
        self.name, self.warn_never_steady_after = name, after

    def _warn_never_steady(self) -> None:
        """Frames keep coming but no view was ever still for ``steady_frames`` frames: nothing is recognised.
        Said once, with the usual causes (an image folder shows each image one frame; a shaking camera)."""
        log.warning(f"{self.name}: {self.stats.seen} frames and the view never held still for "
                    f"gate.steady_frames = {self.steady_frames} frames, so nothing was recognised yet; an image "
                    "folder source shows each image for one frame: set hold_frames in its [[cameras]] (e.g. 15); "
                    "a live camera: mount it firmly or raise gate.change_threshold",
                    extra={"region": self.name, "frames": self.stats.seen})

    @staticmethod
    def _diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(np.abs(a - b)))
