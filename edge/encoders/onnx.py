"""onnxruntime backend: a bundle's ONNX model (fp32 or int8 QDQ) behind the encoder protocols.

Thread count is explicit (a 2-core store box shares its cores with capture and search), the
graph is optimised once at load, and one warm-up call runs at load so the first shopper does
not pay for lazy allocations.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import Bundle, check_io
from edge.errors import BackendError, ModelMismatchError
from edge.preprocess import prepare_batch


def open_session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads; errors become BackendError."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - a runtime install always has it
        raise BackendError("onnxruntime is not installed", hint="pip install onnxruntime") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for corrupt graphs
        raise ModelMismatchError(f"{path}: onnxruntime cannot load this model ({e})",
                                 hint="rebuild the bundle with storelens export") from e


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Unit rows (a guard after int8 arithmetic; the graph already normalises)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32, copy=False)


class OnnxImageEncoder:
    """BGR uint8 images -> (N, dim) float32 unit vectors with onnxruntime."""

    backend = "onnxruntime"

    def __init__(self, *, bundle: Bundle, precision: str = "int8", threads: int = 1, warmup: bool = True) -> None:
        if bundle.preprocess is None:
            raise ModelMismatchError(f"{bundle.root} has no preprocessing section", hint="use an image bundle")
        self.bundle = bundle
        self.precision = precision
        self.spec = bundle.preprocess
        self.model_path = bundle.path_of(bundle.model_file(backend="onnxruntime", precision=precision))
        self._session = open_session(self.model_path, threads)
        check_io(bundle, self.model_path,
                 inputs=[(i.name, tuple(i.shape)) for i in self._session.get_inputs()],
                 outputs=[(o.name, tuple(o.shape)) for o in self._session.get_outputs()])
        check_image_contract(bundle, self.spec.input_size)
        self._input = bundle.inputs[0].name
        self._output = bundle.output.name
        if warmup:
            self.embed([np.zeros((self.spec.input_size, self.spec.input_size, 3), np.uint8)])

    @property
    def dim(self) -> int:
        return self.bundle.embedding_dim

    @property
    def fingerprint(self) -> str:
        return self.bundle.fingerprint

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_tensor(prepare_batch(images, self.spec))

    def embed_tensor(self, x: np.ndarray) -> np.ndarray:
        """Already-preprocessed (N, 3, S, S) float32 input -> unit vectors (benchmarks, parity)."""
        out = self._session.run([self._output], {self._input: x})[0]
        return check_output(l2_normalise(np.asarray(out, np.float32)), self.dim, self.model_path)


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
