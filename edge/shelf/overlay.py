"""The facings drawn on a shelf camera's frame: what `storelens shelf setup` shows and the staff page serves.

One function, :func:`draw_facings`, so that the picture a store's engineer checks at setup is the
picture staff see later: each region's rectangle in its state's colour (grey before a state is
known), with its name and planned sku.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from edge.core.config import RoiSettings

# BGR: ok green, empty red, misplaced orange, unknown grey-blue, no state yet light grey
STATE_COLOURS: dict[str | None, tuple[int, int, int]] = {
    "ok": (50, 160, 46), "empty": (40, 40, 200), "misplaced": (0, 120, 240), "unknown": (140, 120, 110),
    None: (200, 200, 200)}


def draw_facings(frame: np.ndarray, rois: Sequence[RoiSettings],
                 states: Mapping[str, str | None] | None = None) -> np.ndarray:
    """A copy of ``frame`` (BGR) with each region drawn and labelled, coloured by ``states[name]``."""
    out = frame.copy()
    h, w = out.shape[:2]
    thick = max(2, round(min(h, w) / 240))
    scale = max(0.4, min(h, w) / 900)
    for r in rois:
        x, y, rw, rh = r.rect
        p0, p1 = (int(x * w), int(y * h)), (int((x + rw) * w) - 1, int((y + rh) * h) - 1)
        colour = STATE_COLOURS.get((states or {}).get(r.name), STATE_COLOURS[None])
        cv2.rectangle(out, p0, p1, colour, thick)
        label = r.name if r.expected_sku is None else f"{r.name}: {r.expected_sku}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = max(p0[1] + th + 4, th + 4)
        cv2.rectangle(out, (p0[0], ty - th - 4), (min(p0[0] + tw + 6, w - 1), ty + base), colour, -1)
        cv2.putText(out, label, (p0[0] + 3, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out
