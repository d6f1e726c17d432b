"""Edge image encoders: the registry picks the backend by name; both backends agree on one bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.core.config import ModelSettings
from edge.core.errors import BundleError
from edge.models.bundle import default_bundle_path, load_bundle
from edge.models.encoders import ImageEncoder, load_image_encoder
from edge.models.encoders.onnx import OnnxImageEncoder
from edge.models.encoders.openvino import OpenVinoImageEncoder
from edge.models.preprocess import read_image
from tests.conftest import shared_dir

GSD = shared_dir() / "datasets" / "grocery-store"


def photos() -> list[np.ndarray]:
    """A handful of real catalog photos (read from ../shared, never copied) of two products."""
    rels = [f"train/Fruit/Banana/Banana_00{i}.jpg" for i in range(1, 4)] + \
           [f"train/Packages/Milk/Arla-Medium-Fat-Milk/Arla-Medium-Fat-Milk_00{i}.jpg" for i in range(1, 4)]
    return [read_image(GSD / r) for r in rels]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_registry_loads_default_bundle(backend: str, precision: str) -> None:
    enc = load_image_encoder(ModelSettings(backend=backend, precision=precision, threads=1))
    assert isinstance(enc, ImageEncoder)
    assert type(enc) is (OnnxImageEncoder if backend == "onnxruntime" else OpenVinoImageEncoder)
    bundle = load_bundle(default_bundle_path("image"))
    assert enc.fingerprint == bundle.fingerprint and enc.dim == bundle.embedding_dim
    out = enc.embed(photos()[:2])
    assert out.shape == (2, bundle.embedding_dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert enc.embed([]).shape == (0, bundle.embedding_dim)


def test_backends_and_precisions_agree_on_real_photos() -> None:
    imgs = photos()
    ref = load_image_encoder(ModelSettings(backend="onnxruntime", precision="fp32")).embed(imgs)
    for backend in ("onnxruntime", "openvino"):
        for precision in ("fp32", "int8"):
            out = load_image_encoder(ModelSettings(backend=backend, precision=precision)).embed(imgs)
            cos = (out * ref).sum(axis=1)
            # the bundle's parity gate: mean cosine >= 0.98 against fp32 (export/parity.py MIN_COSINE)
            assert float(cos.mean()) >= 0.98 and float(cos.min()) >= 0.97, (backend, precision, cos)
    # and the embedding separates the two products: each photo is nearer its own product's photos
    sims = ref @ ref.T
    np.fill_diagonal(sims, -1)
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert (labels[sims.argmax(axis=1)] == labels).all()


def test_batch_equals_one_by_one() -> None:
    enc = load_image_encoder(ModelSettings(backend="openvino", precision="int8", threads=2))
    imgs = photos()
    batch = enc.embed(imgs)
    single = np.concatenate([enc.embed([im]) for im in imgs])
    np.testing.assert_allclose(batch, single, atol=1e-4)


def test_configured_bundle_path_is_used_and_checked(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no model bundle at .*nowhere"):
        load_image_encoder(ModelSettings(image_bundle=tmp_path / "nowhere"))
    with pytest.raises(BundleError, match="is a text bundle, expected image"):
        load_image_encoder(ModelSettings(image_bundle=default_bundle_path("text")))
