"""Carve a validation set out of the training catalog, the way the store will see new photos.

Photos of a product come in sessions: a dozen near-identical shots of the same bag on the same
shelf. A random carve puts one shot of a session in validation and its siblings in training, so
it measures memory, not recognition (on the Grocery Store train split a 16x16-thumbnail
nearest neighbour finds the product 51% of the time that way, against 7% for the val split,
which comes from other stores). :func:`carve_sessions` links photos of a product whose
thumbnails are near-duplicates into sessions and holds out whole sessions, which brings the
thumbnail figure down to ~10%: a validation with the val split's shift, made from train alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from scipy.sparse.csgraph import connected_components

from export.data import Sample, decode_samples

THUMB = 16


def thumbnails(samples: Sequence[Sample], cache_dir: Path | None = None) -> np.ndarray:
    """(N, 768) unit, mean-centred 16x16 colour thumbnails; a zero row for an unreadable image."""
    dec = decode_samples(list(samples), 64, cache_dir)
    out = np.zeros((len(samples), THUMB * THUMB * 3), np.float32)
    pos = {str(s.path): i for i, s in enumerate(samples)}
    for px, s in zip(dec.pixels, dec.samples, strict=True):
        t = cv2.resize(px, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        t -= t.mean()
        out[pos[str(s.path)]] = t / max(float(np.linalg.norm(t)), 1e-6)
    return out


def carve_random(labels: Sequence[int], per_class: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """(train, validation) indices: ``per_class`` random photos a product (products with > 3x that)."""
    by: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        by.setdefault(int(c), []).append(i)
    val: list[int] = []
    for idx in by.values():
        if len(idx) > per_class * 3:
            val += rng.choice(idx, per_class, replace=False).tolist()
    vs = set(val)
    return [i for i in range(len(labels)) if i not in vs], sorted(val)


def carve_sessions(
    labels: Sequence[int],
    thumbs: np.ndarray,
    *,
    fraction: float,
    threshold: float,
    rng: np.random.Generator,
) -> tuple[list[int], list[int]]:
    """(train, validation) indices holding out whole photo sessions, ~``fraction`` of each product.

    A session is a connected group of a product's photos whose thumbnails have cosine >
    ``threshold``. Sessions are taken in random order until the product has ``fraction`` of its
    photos held out; a session that would take more than twice that is skipped, so every product
    keeps most of its photos for training.
    """
    lab = np.asarray(labels)
    readable = np.linalg.norm(thumbs, axis=1) > 0  # an unreadable photo stays on the train side (and is skipped)
    val: list[int] = []
    for c in np.unique(lab):
        idx = np.flatnonzero((lab == c) & readable)
        sims = thumbs[idx] @ thumbs[idx].T
        n, comp = connected_components(sims > threshold, directed=False)
        held: list[int] = []
        for k in rng.permutation(n):
            if len(held) >= fraction * len(idx):
                break
            members = idx[comp == k].tolist()
            if len(held) + len(members) <= 2 * fraction * len(idx):
                held += members
        val += held
    vs = set(val)
    return [i for i in range(len(lab)) if i not in vs], sorted(val)
