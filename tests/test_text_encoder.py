"""The MiniLM text bundle at the edge (tokenizers + onnxruntime/OpenVINO) against upstream fp32."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edge.core.config import ModelSettings
from edge.core.errors import InputError
from edge.models.bundle import default_bundle_path, load_bundle
from edge.models.encoders import TextEncoder, load_text_encoder

TEXTS = [
    "Banana",
    "Organic oat milk, 1 litre carton",
    "Granny Smith apples are green, crisp and sour",
    "red bell pepper",
    "Yoghurt with strawberry taste",
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """sentence-transformers fp32 embeddings of TEXTS from the installed package (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from export.text import minilm_dir

    st = SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)
    return np.asarray(st.encode(TEXTS, normalize_embeddings=True), np.float32)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_text_encoder_parity_with_fp32(backend: str, reference: np.ndarray) -> None:
    enc = load_text_encoder(ModelSettings(backend="openvino", text_backend=backend, threads=1))
    assert isinstance(enc, TextEncoder)
    assert enc.backend == backend  # type: ignore[attr-defined]
    out = enc.embed(TEXTS)
    assert out.shape == (len(TEXTS), 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    cos = (out * reference).sum(axis=1)
    assert float(cos.mean()) >= 0.98 and float(cos.min()) >= 0.95, cos
    # ranking as upstream: each text's nearest other text is the same as fp32's
    eye = 2 * np.eye(len(TEXTS))
    assert ((out @ out.T - eye).argmax(1) == (reference @ reference.T - eye).argmax(1)).all()


def test_text_bundle_contract_and_batch_independence() -> None:
    bundle = load_bundle(default_bundle_path("text"), modality="text")
    assert bundle.embedding_dim == 384
    assert [f.precision for f in bundle.files if f.role == "model"] == ["int8-dynamic"]
    assert bundle.parity["int8-dynamic"]["mean_cosine"] >= 0.98
    assert bundle.parity["int8-dynamic-per-tensor"]["mean_cosine"] < bundle.parity["int8-dynamic"]["mean_cosine"]
    enc = load_text_encoder(ModelSettings(precision="fp32"))  # int8 only shipped: said by .precision, still works
    assert enc.precision == "int8"  # type: ignore[attr-defined]
    alone = enc.embed(["Banana"])
    padded = enc.embed(["Banana", "a much longer text that forces padding of the short one " * 3])
    np.testing.assert_allclose(alone[0], padded[0], atol=1e-6)  # a batch neighbour does not change a vector
    assert enc.embed([]).shape == (0, 384)
    with pytest.raises(InputError, match="list of strings"):
        enc.embed("Banana")


def test_long_texts_are_truncated_and_counted() -> None:
    enc = load_text_encoder(ModelSettings())
    out = enc.embed(["word " * 1000, "short"])
    assert out.shape == (2, 384)
    assert enc.truncated == 1  # type: ignore[attr-defined]


def test_auto_text_backend_is_onnxruntime() -> None:
    enc = load_text_encoder(ModelSettings(backend="openvino"))  # the image backend does not move text
    assert enc.backend == "onnxruntime"  # type: ignore[attr-defined]


def test_text_bundle_path_checked(tmp_path: Path) -> None:
    from edge.core.errors import BundleError

    with pytest.raises(BundleError, match="is a image bundle, expected text"):
        load_text_encoder(ModelSettings(text_bundle=default_bundle_path("image")))
