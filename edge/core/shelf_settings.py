"""The ``[shelf]`` section: shelf availability alerts, their history and the staff page (:mod:`edge.shelf`).

Kept beside :mod:`edge.core.config` (which puts it on the root :class:`~edge.core.config.Settings`)
so that module stays readable; the same rules apply: unknown keys are errors, values are frozen.
``alert_after_s``, ``planned_gap``, ``planned_below`` and ``other_below`` were chosen on the
bundle's sessions carve of the train split with ``python -m benchmarks.shelf`` (docs/decisions.md,
issue 30), never on val.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

AlertState = Literal["empty", "misplaced", "unknown"]


class ShelfSettings(BaseModel):
    """How a shelf camera's planogram states become alerts, where they are kept, who may see them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Alerts, history and the /shelf page for mode = \"shelf\" cameras")
    alert_after_s: float = Field(20.0, gt=0, le=86400, description="A facing's state must hold this long before "
                                 "it is an alert (or before an alert clears): occlusions and hands are not alerts")
    alert_states: tuple[AlertState, ...] = Field(("empty", "misplaced"), description="States that alert; add "
                                                 "\"unknown\" to be told about facings the model cannot read")
    planned_gap: float = Field(0.125, ge=0, le=2, description="A frame counts for the planned product when its "
                               "score clears the threshold and is within this of the top score (planogram prior)")
    planned_below: float = Field(0.3, ge=0, le=1, description="For that, the planned product may score this much "
                                 "under decision.threshold (verifying what the planogram says is easier than "
                                 "naming an unknown product)")
    other_below: float | None = Field(0.2, ge=0, le=1, description="When the planned product is not close to the "
                                      "top, another product (or the bare shelf) may score this much under "
                                      "decision.threshold to count; empty = it must clear the threshold")
    remember_views: int = Field(4, ge=0, le=16, description="A facing remembers this many views whose vote "
                                "completed: when one comes back (a shopper stepped away) its decision is "
                                "brought back instead of voting again; 0 = vote every view")
    history_max_rows: int = Field(200_000, ge=100, le=50_000_000, description="State changes kept in "
                                  "<catalog.data_dir>/shelf/history.db (oldest dropped)")
    crops_max: int = Field(500, ge=1, le=100_000, description="Alert snapshot crops kept (oldest dropped)")
    token: SecretStr | None = Field(None, min_length=16, description="Staff token for /shelf (open "
                                    "/shelf?token=... once: a cookie keeps it); required off loopback")
