"""int8 with onnxruntime static quantization (QDQ), calibrated on real catalog images.

Calibration images go through :func:`edge.preprocess.prepare_batch` with the bundle's spec, so
the activation ranges are the ones the store will see; never noise. Unreadable or truncated
images are reported (file, reason), skipped, and counted.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.core.errors import ImageError, InputError
from edge.models.preprocess import PreprocessSpec, prepare_batch, read_image

log = logging.getLogger("storelens.export")


@dataclass(frozen=True, kw_only=True)
class ImageSet:
    """Preprocessed images ready for a model, with what could not be read."""

    x: np.ndarray  # (N, 3, S, S) float32
    labels: np.ndarray  # (N,) int64
    paths: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (file, reason)


def load_image_set(paths: Sequence[Path], labels: Sequence[int], spec: PreprocessSpec, *, desc: str = "images",
                   progress: bool = True) -> ImageSet:
    """Read and preprocess images, skipping (and logging) the unreadable ones."""
    xs: list[np.ndarray] = []
    keep_labels: list[int] = []
    keep_paths: list[str] = []
    skipped: list[tuple[str, str]] = []
    for p, lab in tqdm(list(zip(paths, labels, strict=True)), desc=desc, unit="img", disable=not progress,
                       leave=False):
        try:
            img = read_image(p)
        except ImageError as e:
            skipped.append((str(p), e.message))
            log.warning("skip image file=%s reason=%s", p, e.message)
            continue
        xs.append(prepare_batch([img], spec)[0])
        keep_labels.append(int(lab))
        keep_paths.append(str(p))
    if skipped:
        log.warning("%s: skipped %d of %d images (unreadable; listed above)", desc, len(skipped), len(paths))
    s = spec.input_size
    x = np.stack(xs) if xs else np.zeros((0, 3, s, s), np.float32)
    return ImageSet(x=x, labels=np.array(keep_labels, np.int64), paths=tuple(keep_paths), skipped=tuple(skipped))


class _Reader:
    """onnxruntime CalibrationDataReader over a preprocessed array (batches of 16)."""

    def __init__(self, x: np.ndarray, input_name: str, batch: int = 16) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(
            [{input_name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax calibration
        raise NotImplementedError


def quantize_qdq(fp32: Path, out: Path, calib: np.ndarray, *, per_channel: bool, input_name: str = "input",
                 exclude_nodes: Sequence[str] = ()) -> Path:
    """Static int8 QDQ of an fp32 ONNX model: uint8 activations, int8 weights, MinMax ranges.

    uint8 activations x int8 weights (U8S8) is what onnxruntime's x86 kernels run fast: measured
    here on the 144 px encoder, 1 thread, U8S8 ran 1.1 ms against 3.0 ms for S8S8 (no faster than
    fp32), at the same cosine (0.9994).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calib) == 0:
        raise InputError("no calibration images could be read", hint="check the catalog paths (see the skipped list)")
    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        # shape inference + graph optimisation first, as onnxruntime recommends before quantizing
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        kwargs: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
        quantize_static(str(pre), str(out), _Reader(calib, input_name), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(exclude_nodes),
                        extra_options=kwargs)
    return out


def fp32_nodes(onnx_path: Path, *, stem: bool = True) -> list[str]:
    """Nodes kept in fp32: the stem (first Conv) and everything after the last Conv.

    The tail (pooling, projection, whitening, normalisation): int8 there rounds away the small
    differences between similar products. The stem: a 3-channel input convolution is slower in
    int8 than in fp32 on onnxruntime's x86 kernels, so keeping it fp32 is both faster and closer
    to fp32 (figures: ``python -m benchmarks.int8_variants``, docs/benchmarks.md). ``stem=False``
    keeps only the tail.
    """
    import onnx

    g = onnx.load(str(onnx_path)).graph
    convs = [i for i, n in enumerate(g.node) if n.op_type == "Conv"]
    if not convs:
        return [n.name for n in g.node if n.name]
    first = [g.node[convs[0]].name] if stem and len(convs) > 1 else []
    return first + [n.name for n in g.node[convs[-1] + 1 :] if n.name]
