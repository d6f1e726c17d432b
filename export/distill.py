"""Distillation targets for training: the embeddings of one or more teacher encoders.

Why: with ~30 photos a product and no pretraining, two runs of the same recipe differ by a
few points of recall (seed noise), and the concatenation of two encoders' embeddings is a
better retrieval space than either alone. An ensemble does not fit the edge budget (8 MB
bundle, 3 ms a crop), so the student, an encoder of the shipped size, learns to reproduce
it: besides its own CosFace loss, a linear map of its (un-normalised) embedding is pulled
towards the teachers' embedding of the *clean* photo (centre crop, as the edge preprocesses
it) while the student sees the augmented one::

    loss = cosface(student(aug x), y) + distill_weight * mean(1 - cos(P student(aug x), teacher(x)))

``P`` (student dim -> teacher dim) only exists in training; the exported encoder is the
student alone. Teacher embeddings are computed once per run and cached in the run folder.

A teacher is an image bundle folder (run through edge's fp32 onnxruntime encoder) or a
training run's ``encoder.pt`` (run through torch). Each teacher's embeddings are centred over
the catalog (the plain net's ReLU features all share one direction, which would dominate the
cosine) and scaled to length ``1/sqrt(k)``, so the concatenation of k teachers is a unit vector.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import InputError

log = logging.getLogger("storelens.distill")


def teacher_ids(teachers: Sequence[str | Path]) -> list[dict[str, str]]:
    """What each teacher was (path and bundle fingerprint or checkpoint hash), for the training report."""
    return [{"path": str(t), "id": _teacher_key(Path(t))} for t in teachers]


def _teacher_key(path: Path) -> str:
    """Identity of a teacher for the cache: a bundle's fingerprint or a checkpoint's bytes."""
    if path.is_dir():
        from edge.bundle import load_bundle

        return load_bundle(path).fingerprint
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _embed_bundle(path: Path, images_bgr: Sequence[np.ndarray], threads: int) -> np.ndarray:
    from edge.config import ModelSettings
    from edge.encoders import load_image_encoder

    enc = load_image_encoder(ModelSettings(image_bundle=path, precision="fp32", threads=threads))
    return np.concatenate([enc.embed(list(images_bgr[i:i + 64])) for i in range(0, len(images_bgr), 64)])


def _embed_checkpoint(path: Path, images_bgr: Sequence[np.ndarray]) -> np.ndarray:
    from edge.preprocess import prepare_batch
    from export.model import embed_batches
    from export.onnx import load_checkpoint

    ck = load_checkpoint(path)
    batches = (prepare_batch(list(images_bgr[i:i + 64]), ck.spec) for i in range(0, len(images_bgr), 64))
    return embed_batches(ck.model, batches, dim=ck.model.arch.embedding_dim)


def teacher_embeddings(teachers: Sequence[str | Path], pixels_rgb: np.ndarray, *, cache_dir: Path,
                       threads: int = 1) -> np.ndarray:
    """(N, D) float32 unit targets: the scaled concatenation of every teacher's embedding of each photo.

    ``pixels_rgb`` are the training photos as decoded for training (uint8 RGB squares, centre crops
    of the short side); each teacher preprocesses them as the edge does (resize to its input size).
    """
    paths = [Path(t) for t in teachers]
    for p in paths:
        if not (p.is_dir() and (p / "manifest.json").is_file()) and not (p.is_file() and p.suffix == ".pt"):
            raise InputError(f"teacher {p} is neither an image bundle folder nor an encoder.pt",
                             hint="pass --distill-from with a bundle folder (edge/bundles/image) or runs/X/encoder.pt")
    key = hashlib.sha256(("|".join(_teacher_key(p) for p in paths) + f"|{pixels_rgb.shape}").encode()
                         + hashlib.sha256(pixels_rgb[:: max(1, len(pixels_rgb) // 64)].tobytes()).digest())
    cache = cache_dir / f"teachers-{key.hexdigest()[:16]}.npy"
    if cache.is_file():
        return np.load(cache)
    images = [np.ascontiguousarray(px[:, :, ::-1]) for px in pixels_rgb]  # edge encoders take BGR
    parts = []
    for p in paths:
        e = _embed_bundle(p, images, threads) if p.is_dir() else _embed_checkpoint(p, images)
        e = e - e.mean(axis=0)  # centred: a raw ReLU net's embeddings share one big common direction
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        parts.append(e.astype(np.float32) / np.sqrt(len(paths)))
        log.info("teacher %s embedded %d photos (dim %d)", p, len(e), e.shape[1])
    out = np.concatenate(parts, axis=1).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, out)
    return out


class DistillHead(nn.Module):
    """Linear map from the student's embedding to the teachers' space (training only, never exported)."""

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(student_dim, teacher_dim, bias=False)

    def forward(self, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cosine distance between the mapped student embeddings and the teacher targets."""
        return (1 - F.cosine_similarity(self.proj(feats), targets, dim=1)).mean()
