"""Frame gating: embed a region only when its view changed (and, at a kiosk, once it is steady).

Each region keeps a 32x32 grey thumbnail (one ``cv2.resize`` of the crop: microseconds, and
the area averaging removes sensor noise). A frame is compared with the previous frame
(motion) and with the reference view (the view last embedded):

- ``unchanged``: the view equals the reference and ``frames_per_view`` frames of it were
  already embedded — the vote for it is complete, skip.
- ``unsteady`` (kiosk): the view is still moving; wait until ``steady_frames`` still frames.
- ``new_view``: first frame of a different view — embed, and the caller restarts the vote.
- ``embed``: another frame of the current view, while its vote window fills.
"""

from __future__ import annotations

import logging
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
                 enabled: bool = True) -> None:
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
            self._ref = thumb
            self._embedded_of_view = 1
            self.stats.embedded += 1
            return GateVerdict.NEW_VIEW
        if self._embedded_of_view < self.frames_per_view:
            self._embedded_of_view += 1
            self.stats.embedded += 1
            return GateVerdict.EMBED
        self.stats.skipped_unchanged += 1
        return GateVerdict.UNCHANGED

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
