"""OpenVINO backend: the bundle's OpenVINO int8 IR (or its fp32 ONNX) behind the encoder protocols.

OpenVINO reads ONNX directly, so ``precision="fp32"`` runs the same fp32 file as onnxruntime
and ``"int8"`` runs the NNCF-quantized IR the export stage made with the same calibration
images. Threads are set with ``INFERENCE_NUM_THREADS`` and a latency hint (one crop at a time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.core.config import ModelSettings
from edge.core.errors import BackendError, ModelMismatchError
from edge.models.bundle import Bundle, check_io
from edge.models.encoders.common import BundleImageEncoder, check_image_contract

_DEFAULTS = ModelSettings()


def compile_model(path: Path, threads: int) -> Any:
    """Read and compile a model for the CPU with ``threads`` inference threads."""
    try:
        import openvino as ov
    except ImportError as e:  # pragma: no cover - a runtime install always has it
        raise BackendError("OpenVINO is not installed",
                           hint="pip install openvino, or set model.backend=onnxruntime") from e
    core = ov.Core()
    try:
        model = core.read_model(str(path))
        return core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                 "NUM_STREAMS": 1})
    except Exception as e:  # OpenVINO raises RuntimeError subclasses for corrupt models
        raise ModelMismatchError(f"{path}: OpenVINO cannot load this model ({e})",
                                 hint="rebuild the bundle with storelens export") from e


def port_shape(port: Any) -> tuple[Any, ...]:
    """A port's partial shape as a tuple, dynamic dimensions as -1."""
    return tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())


def port_names(port: Any) -> list[str]:
    return sorted(port.get_names()) or [port.get_any_name()]


def io_of(compiled: Any) -> tuple[list[tuple[str, tuple[Any, ...]]], list[tuple[str, tuple[Any, ...]]]]:
    ins = [(n, port_shape(p)) for p in compiled.inputs for n in port_names(p)]
    outs = [(n, port_shape(p)) for p in compiled.outputs for n in port_names(p)]
    return ins, outs


class OpenVinoImageEncoder(BundleImageEncoder):
    """BGR uint8 images -> (N, dim) float32 unit vectors with OpenVINO on the CPU."""

    backend = "openvino"

    def __init__(self, *, bundle: Bundle, precision: str = _DEFAULTS.precision, threads: int = _DEFAULTS.threads,
                 warmup: bool = True) -> None:
        super().__init__(bundle=bundle, precision=precision)
        self._compiled = compile_model(self.model_path, threads)
        ins, outs = io_of(self._compiled)
        check_io(bundle, self.model_path, inputs=ins, outputs=outs)
        check_image_contract(bundle, self.spec.input_size)
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.output(bundle.output.name)
        self._input = bundle.inputs[0].name
        if warmup:
            self._warmup()

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return np.array(self._request.infer({self._input: x})[self._output])
