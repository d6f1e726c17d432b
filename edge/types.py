"""Small immutable result types that cross module boundaries (search -> pipeline -> MQTT)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    """One ranked product for a query: what a match message lists."""

    sku: str
    name: str
    score: float

    def to_dict(self) -> dict[str, object]:
        return {"sku": self.sku, "name": self.name, "score": round(float(self.score), 4)}
