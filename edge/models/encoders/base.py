"""The encoder interface every backend implements (onnxruntime, OpenVINO, ...).

Consumers (index, search, pipeline) depend only on these protocols, so a backend is a
plugin chosen by name in config and tests can run any real encoder behind them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ImageEncoder(Protocol):
    """BGR uint8 images (any size) -> (N, dim) float32 unit vectors."""

    @property
    def dim(self) -> int: ...

    @property
    def fingerprint(self) -> str:
        """Identifies the exact weights (bundle fingerprint); indexes record it and refuse others."""
        ...

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


@runtime_checkable
class TextEncoder(Protocol):
    """Strings -> (N, dim) float32 unit vectors."""

    @property
    def dim(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...
