"""Small real encoders for catalog/index/search tests (no mocks).

- :class:`TinyImageEncoder`: the ``tiny_onnx`` graph in a real onnxruntime session, with
  ``edge.models.preprocess`` at 32 px. Its weights are random, so tests use images it can tell apart
  (flat colours far apart, see :func:`product_image`).
- :class:`TrigramTextEncoder`: character-trigram hashing into 64 dims, L2-normalised. Texts
  that share words share trigrams, so similar texts get high cosines: a real, deterministic
  (if weak) text encoder.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from edge.models.preprocess import PreprocessSpec, prepare_batch


class TinyImageEncoder:
    def __init__(self, path: Path, *, dim: int = 16) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._spec = PreprocessSpec(input_size=32)
        self._dim = dim
        self._fp = "tiny-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return self._fp

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, self._dim), np.float32)
        return np.asarray(self._sess.run(None, {"input": prepare_batch(images, self._spec)})[0], np.float32)


class TrigramTextEncoder:
    def __init__(self, *, dim: int = 64) -> None:
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return f"trigram-hash-{self._dim}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), np.float32)
        for i, t in enumerate(texts):
            s = f"  {t.lower()} "
            for j in range(len(s) - 2):
                out[i, zlib.crc32(s[j : j + 3].encode()) % self._dim] += 1.0
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norm > 0, norm, 1.0)


def product_image(seed: int, *, size: int = 48, noise: float = 0.0,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """A BGR image for product ``seed``: a two-colour pattern from a fixed palette, optional pixel noise."""
    pal = np.random.default_rng(10_000 + seed)
    a, b = pal.integers(0, 256, 3), pal.integers(0, 256, 3)
    img = np.empty((size, size, 3), np.float32)
    split = int(pal.integers(size // 4, 3 * size // 4))
    img[:, :split] = a
    img[:, split:] = b
    if noise:
        img += (rng or np.random.default_rng(seed)).normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_jpeg(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path
