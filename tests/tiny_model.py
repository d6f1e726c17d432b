"""A tiny image encoder built directly as an ONNX graph (no torch needed in the tests).

conv 3x3 -> relu -> global average pool -> linear -> L2 normalise, with fixed random
weights: small enough to build in milliseconds, real enough for onnxruntime, OpenVINO and
int8 quantization to run on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_tiny_encoder(path: Path, *, input_size: int = 32, dim: int = 16, channels: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((channels, 3, 3, 3)) * 0.3).astype(np.float32), "conv_w")
    b = numpy_helper.from_array(np.zeros(channels, np.float32), "conv_b")
    fc = numpy_helper.from_array((rng.standard_normal((channels, dim)) * 0.5).astype(np.float32), "fc_w")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "fc_w"], ["e"]),
        helper.make_node("ReduceL2", ["e", "axes"], ["n"], keepdims=1),
        helper.make_node("Div", ["e", "n"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_encoder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, input_size, input_size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [w, b, fc, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
