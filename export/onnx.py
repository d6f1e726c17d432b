"""fp32 ONNX export of the trained image encoder (dynamic batch, L2 norm inside the graph).

The checkpoint ``encoder.pt`` written by export/train.py holds the EMA weights, the
architecture and the preprocessing; a training ``checkpoint.pt`` (EMA weights only) can be
exported too for development, with the default architecture and an explicit input size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from edge.core.errors import InputError
from edge.models.preprocess import PreprocessSpec
from export.model import EncoderArch, ProductEncoder

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
OPSET = 17


@dataclass(frozen=True, kw_only=True)
class LoadedCheckpoint:
    model: ProductEncoder
    spec: PreprocessSpec
    report: dict[str, Any] = field(default_factory=dict)
    classes: dict[int, str] = field(default_factory=dict)
    source: str = ""


def load_checkpoint(path: Path, *, input_size: int | None = None) -> LoadedCheckpoint:
    """Load ``encoder.pt`` (or a training ``checkpoint.pt``) as an eval-mode ProductEncoder."""
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}", hint="train first: storelens export train ... --out RUN")
    try:
        st = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for corrupt pickles
        raise InputError(f"{path}: not a readable torch checkpoint ({e})",
                         hint="pass encoder.pt from a training run") from e
    if not isinstance(st, dict) or "ema" not in st:
        raise InputError(f"{path}: no 'ema' weights in this checkpoint",
                         hint="pass encoder.pt or checkpoint.pt of export.train")
    arch = EncoderArch.from_dict(st["arch"]) if "arch" in st else EncoderArch()
    spec = PreprocessSpec.from_dict(st["preprocess"]) if "preprocess" in st else PreprocessSpec()
    if input_size is not None:
        spec = PreprocessSpec.from_dict({**spec.to_dict(), "input_size": input_size})
    model = ProductEncoder(arch)
    try:
        model.load_state_dict(st["ema"])
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not fit the architecture {arch} ({str(e)[:200]})",
                         hint="the checkpoint's 'arch' is missing or wrong; export the matching encoder.pt") from e
    model.eval()
    return LoadedCheckpoint(model=model, spec=spec, report=dict(st.get("report", {})),
                            classes={int(k): str(v) for k, v in dict(st.get("classes", {})).items()}, source=str(path))


def export_onnx(model: torch.nn.Module, spec: PreprocessSpec, out: Path, *, embedding_dim: int) -> Path:
    """Trace ``model`` (eval mode, BatchNorm folded) to ONNX with a dynamic batch axis."""
    model = model.eval()
    x = torch.zeros(2, 3, spec.input_size, spec.input_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        # The TorchScript exporter: deterministic, folds BatchNorm into Conv, no onnxscript needed.
        torch.onnx.export(model, (x,), str(out), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    m = onnx.load(str(out))
    # The embedding width is static; say so in the graph so runtimes can check it against the manifest.
    dims = m.graph.output[0].type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_value = embedding_dim
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return out
