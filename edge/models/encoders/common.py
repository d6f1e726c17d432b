"""What the image backends share: the bundle contract checks and the embed path around inference.

A backend only opens its model and runs a preprocessed batch (``_infer``); preprocessing,
shape checks and normalisation live here once, so onnxruntime and OpenVINO cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.core.errors import ModelMismatchError
from edge.models.bundle import Bundle
from edge.models.preprocess import prepare_batch


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Unit rows (a guard after int8 arithmetic; the graph already normalises)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32, copy=False)


def check_image_contract(bundle: Bundle, s: int) -> None:
    """The manifest's input tensor must be the preprocessing's (N, 3, S, S) and output (N, dim)."""
    shape = tuple(bundle.inputs[0].shape)
    if len(shape) != 4 or shape[1:] != (3, s, s):
        raise ModelMismatchError(f"{bundle.root}: input shape {list(shape)} does not match preprocessing "
                                 f"({s}x{s} RGB)", hint="rebuild the bundle with storelens export bundle")
    if tuple(bundle.output.shape)[1:] != (bundle.embedding_dim,):
        raise ModelMismatchError(f"{bundle.root}: output shape {list(bundle.output.shape)} does not match "
                                 f"embedding_dim {bundle.embedding_dim}", hint="rebuild the bundle")


def check_output(out: np.ndarray, dim: int, model_path: Path) -> np.ndarray:
    if out.ndim != 2 or out.shape[1] != dim:
        raise ModelMismatchError(f"{model_path}: produced shape {out.shape}, manifest says (N, {dim})",
                                 hint="rebuild the bundle with storelens export")
    return out


class BundleEncoder:
    """What every bundle encoder reports: its dimension and the fingerprint indexes record."""

    bundle: Bundle

    @property
    def dim(self) -> int:
        return self.bundle.embedding_dim

    @property
    def fingerprint(self) -> str:
        return self.bundle.fingerprint


class BundleImageEncoder(BundleEncoder):
    """BGR uint8 images -> (N, dim) float32 unit vectors; subclasses open the model and ``_infer``."""

    backend = ""

    def __init__(self, *, bundle: Bundle, precision: str) -> None:
        if bundle.preprocess is None:
            raise ModelMismatchError(f"{bundle.root} has no preprocessing section", hint="use an image bundle")
        self.bundle = bundle
        self.precision = precision
        self.spec = bundle.preprocess
        self.model_path = bundle.path_of(bundle.model_file(backend=self.backend, precision=precision))

    def _infer(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _warmup(self) -> None:
        """One call at load so the first shopper does not pay for lazy allocations."""
        self.embed([np.zeros((self.spec.input_size, self.spec.input_size, 3), np.uint8)])

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_tensor(prepare_batch(images, self.spec))

    def embed_tensor(self, x: np.ndarray) -> np.ndarray:
        """Already-preprocessed (N, 3, S, S) float32 input -> unit vectors (benchmarks, parity)."""
        return check_output(l2_normalise(np.asarray(self._infer(x), np.float32)), self.dim, self.model_path)
