"""Encoders: batch in, L2-normalised float32 vectors out, behind one interface per modality.

:func:`load_image_encoder` / :func:`load_text_encoder` are the only way the runtime gets an
encoder: the backend is picked by name from config and imported lazily (a box without OpenVINO
still runs onnxruntime), the bundle is verified before loading, and one warm-up call runs at load.
"""

from __future__ import annotations

from pathlib import Path

from edge.core.config import ModelSettings
from edge.core.errors import BackendError
from edge.models.bundle import default_bundle_path, load_bundle
from edge.models.encoders.base import ImageEncoder, TextEncoder

__all__ = ["ImageEncoder", "TextEncoder", "load_image_encoder", "load_text_encoder"]


def load_image_encoder(model: ModelSettings, *, warmup: bool = True) -> ImageEncoder:
    """The image encoder the config asks for (``model.image_bundle=None``: the embedded default)."""
    bundle = load_bundle(_bundle_path(model.image_bundle, "image"), modality="image")
    if model.backend == "onnxruntime":
        from edge.models.encoders.onnx import OnnxImageEncoder

        return OnnxImageEncoder(bundle=bundle, precision=model.precision, threads=model.threads, warmup=warmup)
    if model.backend == "openvino":
        from edge.models.encoders.openvino import OpenVinoImageEncoder

        return OpenVinoImageEncoder(bundle=bundle, precision=model.precision, threads=model.threads, warmup=warmup)
    raise BackendError(f"unknown backend {model.backend!r}", hint="set model.backend to onnxruntime or openvino")


def load_text_encoder(model: ModelSettings, *, warmup: bool = True) -> TextEncoder:
    """The MiniLM text encoder (``model.text_bundle=None``: the embedded default)."""
    from edge.models.encoders.text import BundleTextEncoder

    bundle = load_bundle(_bundle_path(model.text_bundle, "text"), modality="text")
    # The text model is onnxruntime dynamic int8 (MatMulInteger), which OpenVINO runs slower
    # than onnxruntime, so `auto` picks onnxruntime whatever the image backend is.
    backend = "onnxruntime" if model.text_backend == "auto" else model.text_backend
    return BundleTextEncoder(bundle=bundle, backend=backend, precision=model.precision, threads=model.threads,
                             warmup=warmup)


def _bundle_path(configured: Path | None, modality: str) -> Path:
    return Path(configured) if configured is not None else default_bundle_path(modality)
