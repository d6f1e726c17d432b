"""Region crops: :func:`crop` cuts a region out of a frame; :class:`DecidedCrops` keeps the crop each
region's current view was decided on (what confirmations keep and learning learns).

A decision is published in the round of its frame, so its crop is the region's crop of the
camera's newest frame. A heartbeat re-sends an older decision: its crop must be the one its view
was decided on, never the camera's newest frame, which may show a hand or the next item (issue
28, finding 10: a later scan taught the catalog a hand). :class:`DecidedCrops` keeps one crop
per region, copied (capture may reuse frame buffers).
"""

from __future__ import annotations

import numpy as np

from edge.pipeline.vote import Decision


def crop(image: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
    """The normalised ``(x, y, w, h)`` region of ``image`` (a view, at least 1x1 pixel)."""
    h, w = image.shape[:2]
    x0, y0 = int(rect[0] * w), int(rect[1] * h)
    x1, y1 = max(x0 + 1, round((rect[0] + rect[2]) * w)), max(y0 + 1, round((rect[1] + rect[3]) * h))
    return image[y0:min(y1, h), x0:min(x1, w)]


class DecidedCrops:
    """Per region: the view last decided and the crop it was decided on."""

    def __init__(self) -> None:
        self._by_region: dict[str, tuple[str | None, np.ndarray | None]] = {}

    def for_decision(self, d: Decision, newest: np.ndarray | None) -> np.ndarray | None:
        """The crop for ``d``: ``newest`` (kept) for a decision; the kept one for a heartbeat of the same view
        (None for a heartbeat of a view this run never decided)."""
        key = f"{d.camera}/{d.roi}"
        if not d.heartbeat:
            self._by_region[key] = (d.view_id, None if newest is None else newest.copy())
        view, kept = self._by_region.get(key, (None, None))
        return kept if view == d.view_id else None
