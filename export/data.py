"""Labelled catalog photos for training and evaluation.

Two layouts are read: the Grocery Store split files (``path, fine_label, coarse_label`` lines,
paths relative to the split file's folder, which also holds ``classes.csv``) and a plain
``<root>/<sku>/*.jpg`` folder. Images are decoded once through edge's preprocessing and
cached as uint8 arrays, so an epoch costs only augmentation and the network.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.core.errors import ImageError, InputError
from edge.models.preprocess import read_image, resize_short_side_center_crop

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    coarse: int
    group: str  # top-level folder of the split path (Fruit / Vegetables / Packages), or ""


@dataclass(frozen=True)
class ClassInfo:
    label: int
    name: str
    coarse_name: str
    iconic: Path | None
    description: Path | None


def read_classes(root: Path) -> dict[int, ClassInfo]:
    """Parse ``classes.csv`` of the Grocery Store layout (empty dict if absent)."""
    f = root / "classes.csv"
    if not f.is_file():
        return {}
    out: dict[int, ClassInfo] = {}
    with f.open(newline="", encoding="utf-8") as fh:
        rows = csv.reader(fh)
        next(rows, None)
        for row in rows:
            if len(row) < 4:
                continue
            icon = root / row[4].lstrip("/") if len(row) > 4 and row[4].strip() else None
            desc = root / row[5].lstrip("/") if len(row) > 5 and row[5].strip() else None
            out[int(row[1])] = ClassInfo(int(row[1]), row[0].strip(), row[2].strip(), icon, desc)
    return out


def read_split(split_file: Path) -> list[Sample]:
    """Read a split file; raise :class:`InputError` naming the line that is malformed."""
    if not split_file.is_file():
        raise InputError(f"split file not found: {split_file}", hint="pass the path of e.g. train.txt")
    root = split_file.parent
    samples: list[Sample] = []
    for n, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2:
            raise InputError(f"{split_file}:{n}: expected 'path, fine_label[, coarse_label]', got {line!r}")
        try:
            label, coarse = int(parts[1]), int(parts[2]) if len(parts) > 2 else -1
        except ValueError as e:
            raise InputError(f"{split_file}:{n}: labels must be integers ({e})") from e
        rel = Path(parts[0])
        group = rel.parts[1] if len(rel.parts) > 2 else ""
        samples.append(Sample(root / rel, label, coarse, group))
    return samples


def read_folder(root: Path) -> tuple[list[Sample], list[str]]:
    """``<root>/<sku>/*.jpg`` -> samples labelled by sorted sku folder name, and the names."""
    skus = sorted(d.name for d in root.iterdir() if d.is_dir())
    samples = [
        Sample(p, i, -1, "")
        for i, sku in enumerate(skus)
        for p in sorted((root / sku).iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    return samples, skus


@dataclass
class DecodedSet:
    pixels: np.ndarray  # (N, S, S, 3) uint8, RGB
    labels: np.ndarray  # (N,) int64
    samples: list[Sample]
    skipped: list[tuple[str, str]]


def decode_samples(samples: list[Sample], size: int, cache_dir: Path | None = None) -> DecodedSet:
    """Decode and square-crop every image to ``size`` px (RGB), skipping and reporting bad files."""
    key = hashlib.sha256(("|".join(f"{s.path}:{s.label}" for s in samples) + f"@{size}").encode()).hexdigest()[:16]
    cache = cache_dir / f"decoded-{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        keep = [samples[i] for i in z["index"]]
        return DecodedSet(z["pixels"], z["labels"], keep, [tuple(x) for x in z["skipped"].tolist()])  # type: ignore[misc]
    pix, idx, skipped = [], [], []
    for i, s in enumerate(tqdm(samples, desc=f"decode {size}px", unit="img", leave=False)):
        try:
            img = read_image(s.path)
        except ImageError as e:
            skipped.append((str(s.path), e.message))
            log.warning("skip image path=%s reason=%s", s.path, e.message)
            continue
        pix.append(resize_short_side_center_crop(img, size)[:, :, ::-1])
        idx.append(i)
    pixels = np.stack(pix) if pix else np.zeros((0, size, size, 3), np.uint8)
    labels = np.array([samples[i].label for i in idx], np.int64)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            pixels=pixels,
            labels=labels,
            index=np.array(idx, np.int64),
            skipped=np.array(skipped, dtype=str).reshape(-1, 2),
        )
    return DecodedSet(pixels, labels, [samples[i] for i in idx], skipped)
