"""The ``[learning]`` section: confirmed crops become reference photos (:mod:`edge.catalog.learning`).

Kept beside :mod:`edge.core.config` (which puts it on the root :class:`~edge.core.config.Settings`)
so that module stays readable; the same rules apply: unknown keys are errors, values are frozen.
The defaults were chosen on the bundle's sessions carve of the train split, never on val
(docs/decisions.md, issue 18).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Source = Literal["kiosk", "command", "scan"]


class LearningSettings(BaseModel):
    """Which confirmations teach the catalog, and the rules a confirmed crop must pass to become a photo."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Enroll confirmed crops as reference photos of the confirmed product")
    sources: tuple[Source, ...] = Field(("kiosk", "command", "scan"), description="Confirmations learned from: "
                                        "kiosk (screen taps), command (cmd/confirm), scan (events/scan)")
    duplicate_cosine: float = Field(0.95, gt=0, le=1, description="A crop this close (cosine) to a photo the "
                                    "product already has adds nothing: skipped")
    hold_below: float | None = Field(None, ge=-1, le=1, description="A crop whose best cosine to the confirmed "
                                     "product's photos is below this is held for review; empty = calibrated value")
    uncalibrated_hold_below: float | None = Field(None, ge=-1, le=1, description="hold_below when neither it nor "
                                                  "a stored calibration (storelens calibrate) sets one; empty = no "
                                                  "calibration, no learning: every confirmation is held for review")
    max_learned_per_hour: int | None = Field(4, ge=1, le=10_000, description="Photos one product may learn in an "
                                             "hour (more confirmations are refused as `limited`); empty = no bound")
    max_per_product: int = Field(20, ge=1, le=1000, description="Learned photos a product keeps (oldest leave "
                                 "first; enrolled catalog photos never leave)")
    review_max: int = Field(500, ge=0, le=100_000, description="Held crops kept for review (oldest dropped)")
    scan_window_s: float = Field(10.0, gt=0, le=300, description="A point-of-sale scan is matched to the view on "
                                 "the tray at its time, up to this long after that view was last seen")
