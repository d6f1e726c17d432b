"""Image preprocessing, defined once and shared by training, calibration and the runtime.

Training (export/train.py), int8 calibration (export/quantize.py, export/openvino.py) and
every edge encoder call :func:`prepare_batch` with the :class:`PreprocessSpec` recorded in
the model bundle's manifest, so the pixels a model sees in the store are the pixels it was
trained and calibrated on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from edge.core.errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # files read as images (catalog, cameras)
ResizePolicy = Literal["short-side-center-crop", "stretch"]


@dataclass(frozen=True, kw_only=True)
class PreprocessSpec:
    """How an image becomes a model input tensor (recorded in every bundle manifest)."""

    input_size: int = 128
    colour_order: Literal["RGB", "BGR"] = "RGB"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize_policy: ResizePolicy = "short-side-center-crop"
    layout: Literal["NCHW"] = field(default="NCHW")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        known = {k: d[k] for k in ("input_size", "colour_order", "resize_policy", "layout") if k in d}
        return cls(
            mean=tuple(float(x) for x in d.get("mean", cls.mean)),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d.get("std", cls.std)),  # type: ignore[arg-type]
            **known,
        )


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8 (H, W, 3); raise :class:`ImageError` saying why not."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"image not found: {p}", hint="check the path and that the file exists")
    data = p.read_bytes()
    return decode_image(data, source=str(p))


def decode_image(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to BGR uint8, rejecting corrupt input."""
    if not data:
        raise ImageError(f"{source}: empty file", hint="re-copy or re-capture the image")
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ImageError(f"{source}: not a readable image", hint="use a JPEG or PNG file that opens in an image viewer")
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageError(
            f"{source}: truncated JPEG (no end-of-image marker)", hint="re-copy the file; it was cut short"
        )
    return img


def resize_short_side_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Resize so the short side is ``size`` and cut the central ``size`` x ``size`` square."""
    h, w = img.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(img, (nw, nh), interpolation=interp)
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top : top + size, left : left + size]


def to_model_pixels(img_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Geometry step only: BGR uint8 image -> uint8 (size, size, 3) in the spec's colour order."""
    if img_bgr.ndim == 2:
        img_bgr = cv2.cvtColor(img_bgr, cv2.COLOR_GRAY2BGR)
    if spec.resize_policy == "stretch":
        out = cv2.resize(img_bgr, (spec.input_size, spec.input_size), interpolation=cv2.INTER_AREA)
    else:
        out = resize_short_side_center_crop(img_bgr, spec.input_size)
    if spec.colour_order == "RGB":
        out = cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(out)


def normalise(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N, H, W, 3) or (H, W, 3) -> float32 channel-first, scaled by mean/std."""
    scale = np.float32(1.0 / 255.0)
    mean = np.asarray(spec.mean, np.float32)
    inv_std = np.float32(1.0) / np.asarray(spec.std, np.float32)
    x: np.ndarray = (pixels.astype(np.float32) * scale - mean) * inv_std
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def prepare_batch(images_bgr: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """BGR uint8 images of any size -> float32 (N, 3, S, S) model input."""
    if len(images_bgr) == 0:
        return np.zeros((0, 3, spec.input_size, spec.input_size), np.float32)
    pixels = np.stack([to_model_pixels(im, spec) for im in images_bgr])
    return normalise(pixels, spec)
