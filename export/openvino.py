"""OpenVINO int8 IR: ``openvino.convert_model`` of the fp32 ONNX + ``nncf.quantize``.

Same calibration images as the onnxruntime int8 model. The tail after the last convolution
(the last activation, pooling, any projection, L2 normalisation) is kept out of the
quantization with an ignored scope: measured on an earlier model, NNCF's defaults there kept
embedding cosine at 0.99 yet lost 7 points of recall@1, because int8 on the projection of a
pooled vector flattens the small differences that separate similar products.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("storelens.export")


def tail_op_names(model: Any) -> list[str]:
    """Friendly names of the non-convolution ops after the last Convolution, in topological order."""
    ops = list(model.get_ordered_ops())
    last = max((i for i, op in enumerate(ops) if op.get_type_name() == "Convolution"), default=-1)
    skip = {"Parameter", "Result", "Constant", "Convolution"}  # a later shortcut conv is still quantized
    return [op.get_friendly_name() for op in ops[last + 1 :] if op.get_type_name() not in skip]


def quantize_openvino(fp32_onnx: Path, out_xml: Path, calib: np.ndarray, *, input_name: str = "input",
                      ignore_tail: bool = True, preset: str = "performance") -> tuple[Path, dict[str, Any]]:
    """Write ``out_xml`` (+ .bin) and return it with the settings used (recorded in the manifest)."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(fp32_onnx))
    ignored = tail_op_names(model) if ignore_tail else []
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
