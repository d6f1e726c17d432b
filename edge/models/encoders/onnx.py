"""onnxruntime backend: a bundle's ONNX model (fp32 or int8 QDQ) behind the encoder protocols.

Thread count is explicit (a 2-core store box shares its cores with capture and search), the
graph is optimised once at load, and one warm-up call runs at load so the first shopper does
not pay for lazy allocations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.core.config import ModelSettings
from edge.core.errors import BackendError, ModelMismatchError
from edge.models.bundle import Bundle, check_io
from edge.models.encoders.common import BundleImageEncoder, check_image_contract, check_output, l2_normalise

_DEFAULTS = ModelSettings()


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


class OnnxImageEncoder(BundleImageEncoder):
    """BGR uint8 images -> (N, dim) float32 unit vectors with onnxruntime."""

    backend = "onnxruntime"

    def __init__(self, *, bundle: Bundle, precision: str = _DEFAULTS.precision, threads: int = _DEFAULTS.threads,
                 warmup: bool = True) -> None:
        super().__init__(bundle=bundle, precision=precision)
        self._session = open_session(self.model_path, threads)
        check_io(bundle, self.model_path,
                 inputs=[(i.name, tuple(i.shape)) for i in self._session.get_inputs()],
                 outputs=[(o.name, tuple(o.shape)) for o in self._session.get_outputs()])
        check_image_contract(bundle, self.spec.input_size)
        self._input = bundle.inputs[0].name
        self._output = bundle.output.name
        if warmup:
            self._warmup()

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run([self._output], {self._input: x})[0])


__all__ = ["OnnxImageEncoder", "check_image_contract", "check_output", "l2_normalise", "open_session"]
