"""OpenVINO int8 IR: ``openvino.convert_model`` of the fp32 ONNX + ``nncf.quantize``.

Same calibration images as the onnxruntime int8 model. The stem convolution and the tail
after the last convolution (the last activation, pooling, any projection, L2 normalisation) are
kept out of the quantization with an ignored scope (:func:`fp32_op_names`). The tail because,
measured on an earlier model, NNCF's defaults there kept embedding cosine at 0.99 yet lost 7
points of recall@1: int8 on the projection of a pooled vector flattens the small differences
that separate similar products.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("storelens.export")


def fp32_op_names(model: Any, *, stem: bool = True) -> list[str]:
    """Friendly names of the ops kept fp32: the stem Convolution (unless ``stem=False``) and the
    non-convolution ops after the last Convolution, in topological order (why: see
    :func:`export.quantize.fp32_nodes`)."""
    ops = list(model.get_ordered_ops())
    convs = [i for i, op in enumerate(ops) if op.get_type_name() == "Convolution"]
    last = convs[-1] if convs else -1
    skip = {"Parameter", "Result", "Constant", "Convolution"}  # a later shortcut conv is still quantized
    first = [ops[convs[0]].get_friendly_name()] if stem and len(convs) > 1 else []
    return first + [op.get_friendly_name() for op in ops[last + 1 :] if op.get_type_name() not in skip]


def quantize_openvino(fp32_onnx: Path, out_xml: Path, calib: np.ndarray, *, input_name: str = "input",
                      keep_fp32: bool = True, keep_stem: bool = True,
                      preset: str = "performance") -> tuple[Path, dict[str, Any]]:
    """Write ``out_xml`` (+ .bin) and return it with the settings used (recorded in the manifest).

    ``keep_fp32``: keep :func:`fp32_op_names` out of the quantization (``keep_stem``: the stem among them).
    """
    import nncf
    import openvino as ov

    model = ov.convert_model(str(fp32_onnx))
    ignored = fp32_op_names(model, stem=keep_stem) if keep_fp32 else []
    batches = [calib[i : i + 1] for i in range(len(calib))]
    qmodel = nncf.quantize(
        model,
        nncf.Dataset(batches, lambda b: {input_name: b}),
        preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(batches),
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
    )
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(qmodel, str(out_xml), compress_to_fp16=False)
    return out_xml, {"tool": "nncf.quantize", "preset": preset, "subset_size": len(batches),
                     "ignored_scope": ignored}
