"""Small immutable types that cross subsystem boundaries: ranked candidates and the unknown-product rule."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    """One ranked product for a query: what a match message lists."""

    sku: str
    name: str
    score: float

    def to_dict(self) -> dict[str, object]:
        return {"sku": self.sku, "name": self.name, "score": round(float(self.score), 4)}


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """The decision rule's two numbers and where they came from (``config``, ``calibrated``, ``none``)."""

    score: float | None = None
    margin: float | None = None
    source: str = "none"

    def accepts(self, candidates: Sequence[Candidate]) -> bool:
        """True when the top candidate clears both thresholds (False for no candidates)."""
        if not candidates:
            return False
        top1 = float(candidates[0].score)
        top2 = float(candidates[1].score) if len(candidates) > 1 else -1.0
        return (self.score is None or top1 >= self.score) and (self.margin is None or top1 - top2 >= self.margin)


def resolve_thresholds(score: float | None, margin: float | None, stored: Thresholds | None = None) -> Thresholds:
    """The one precedence rule: a configured value wins (each on its own), else the stored one, else none.

    ``stored`` is what the catalog holds (a calibration measured with the encoder in use) or
    anything with ``score`` and ``margin``; None values mean "no threshold" (accept).
    """
    if score is None and margin is None:
        return stored if stored is not None else Thresholds()
    return Thresholds(score=score if score is not None else (stored.score if stored else None),
                      margin=margin if margin is not None else (stored.margin if stored else None), source="config")


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """What ``storelens calibrate`` measured and chose."""

    score: float
    margin: float
    target: float
    known_queries: int
    unknown_queries: int
    known_accept_rate: float
    known_top1_accuracy: float  # top-1 correct among all known queries, before thresholds
    accepted_precision: float  # top-1 correct among accepted known queries
    false_accept_rate: float  # held-out product queries wrongly accepted
    held_out: tuple[str, ...]
    catalog_version: int
    fingerprint: str
    # learning (edge.catalog.learning): a confirmed crop whose best cosine to the confirmed product's photos is
    # below this is held for review; the HOLD_QUANTILE of labelled queries' cosines to their own product's photos
    learn_floor: float | None = None
    # risk mode (``storelens calibrate --max-wrong``): the target share of wrong answers among everything named
    # (another enrolled product, or a product that is not enrolled), and what the chosen pair gives on the half
    # of the labelled photos it was chosen on (fit) and on the other half (check)
    max_wrong: float | None = None
    risk: dict[str, float] | None = None

    def thresholds(self) -> Thresholds:
        return Thresholds(score=self.score, margin=self.margin, source="calibrated")

    def to_json(self) -> str:
        d = asdict(self)
        d["held_out"] = list(self.held_out)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        d = json.loads(text)
        d["held_out"] = tuple(d.get("held_out", ()))
        return cls(**d)
