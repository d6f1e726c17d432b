"""Several trained encoders exported as one (``storelens export bundle --checkpoint A --checkpoint B``).

Why: the kiosk has latency to spare (a view embeds a few frames), and encoders trained apart err on
different photos, so together they name more of them right than either (docs/decisions.md,
2026-12-06 evening). The members' unit embeddings are concatenated and scaled by 1/sqrt(k): the
cosine of two ensemble embeddings is the mean of the members' cosines, and the output stays unit
length. A member trained at a smaller input size gets the bundle's input resized inside the graph,
so the runtime keeps one preprocessing and one model file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edge.core.errors import InputError
from export.onnx import LoadedCheckpoint, load_checkpoint

# Training-report keys that must agree: the parity split is the members' shared carve.
SAME_CARVE_KEYS = ("carve", "carve_per_class", "carve_fraction", "session_threshold", "seed", "holdout_classes")


class EnsembleEncoder(nn.Module):
    """Image (N, 3, S, S) at the largest member's size -> (N, sum of dims) unit-length embeddings."""

    def __init__(self, members: Sequence[nn.Module], sizes: Sequence[int]) -> None:
        super().__init__()
        if len(members) != len(sizes) or len(members) < 2:
            raise ValueError("an ensemble needs two or more members, each with its input size")
        self.members = nn.ModuleList(members)
        self.sizes = tuple(int(s) for s in sizes)
        self.scale = 1.0 / math.sqrt(len(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for member, size in zip(self.members, self.sizes, strict=True):
            xi = x if size == x.shape[-1] else F.interpolate(x, size=(size, size), mode="bilinear",
                                                              align_corners=False)
            parts.append(F.normalize(member(xi), dim=1))
        return torch.cat(parts, dim=1) * self.scale


def load_encoders(paths: Sequence[Path], *, input_size: int | None = None) -> LoadedCheckpoint:
    """One checkpoint as itself; several as an :class:`EnsembleEncoder` that shares their carve."""
    if len(paths) == 1:
        return load_checkpoint(paths[0], input_size=input_size)
    cks = [load_checkpoint(p, input_size=input_size) for p in paths]
    _ensure_compatible_or_raise(cks)
    big = max(cks, key=lambda c: c.spec.input_size)
    model = EnsembleEncoder([c.model for c in cks], [c.spec.input_size for c in cks]).eval()
    pretrained = [c.report.get("pretrained") for c in cks]
    members = [{"checkpoint": c.source, "input_size": c.spec.input_size, "embedding_dim": c.embedding_dim,
                "config": c.report.get("config"), "selected_epoch": c.report.get("selected_epoch")} for c in cks]
    report = {**cks[0].report, "ensemble": members,
              "pretrained": pretrained[0] if all(p == pretrained[0] for p in pretrained) else pretrained}
    return LoadedCheckpoint(model=model, spec=big.spec, embedding_dim=sum(c.embedding_dim for c in cks),
                            report=report, classes=cks[0].classes, source=" + ".join(c.source for c in cks))


def _ensure_compatible_or_raise(cks: Sequence[LoadedCheckpoint]) -> None:
    first = cks[0]
    for ck in cks[1:]:
        a, b = first.spec.to_dict(), ck.spec.to_dict()
        a.pop("input_size"), b.pop("input_size")
        if a != b:
            raise InputError(f"{ck.source}: preprocessing {b} differs from {first.source}'s {a}",
                             hint="ensemble encoders trained with the same normalisation (same backbone family)")
        if ck.classes != first.classes:
            raise InputError(f"{ck.source} was trained on other products than {first.source}",
                             hint="train every member on the same split")
        ca, cb = (dict(c.report.get("config", {})) for c in (first, ck))
        diff = [k for k in SAME_CARVE_KEYS if ca.get(k) != cb.get(k)]
        if diff:
            raise InputError(f"{ck.source} carved its validation differently from {first.source} ({', '.join(diff)})",
                             hint="train every member with the same --seed and carve settings: the parity gate "
                                  "needs photos none of them trained on")
