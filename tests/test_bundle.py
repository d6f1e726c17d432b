"""Model bundles: manifest + hashes verified on load, mismatches refused with the file named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.core.errors import BundleError, ModelMismatchError
from edge.models.bundle import (
    TensorSpec,
    default_bundle_path,
    describe_file,
    load_bundle,
    manifest_dict,
    write_manifest,
)
from edge.models.encoders.onnx import OnnxImageEncoder
from edge.models.encoders.openvino import OpenVinoImageEncoder
from edge.models.preprocess import PreprocessSpec


def make_bundle(root: Path, model: Path, *, size: int = 32, dim: int = 16, out_dim: int | None = None) -> Path:
    """A one-file fp32 bundle around an ONNX model; ``out_dim`` lets a test lie about the output."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, root / "model.onnx")
    files = [describe_file(root, "model.onnx", precision="fp32")]
    d = out_dim or dim
    write_manifest(root, manifest_dict(
        name="tiny", version="1", modality="image", embedding_dim=d, metric="cos",
        preprocess=PreprocessSpec(input_size=size),
        inputs=[TensorSpec(name="input", shape=("batch", 3, size, size))],
        output=TensorSpec(name="embedding", shape=("batch", d)), files=files))
    return root


def test_load_verifies_and_fingerprints(tmp_path: Path, tiny_onnx: Path) -> None:
    a = load_bundle(make_bundle(tmp_path / "a", tiny_onnx))
    b = load_bundle(make_bundle(tmp_path / "b", tiny_onnx))
    assert a.modality == "image" and a.embedding_dim == 16
    assert a.preprocess == PreprocessSpec(input_size=32)
    assert a.fingerprint == b.fingerprint  # same bytes + preprocessing -> same id, wherever it lies
    assert len(a.fingerprint) == 16
    c = load_bundle(make_bundle(tmp_path / "c", tiny_onnx, size=32, dim=16, out_dim=None))
    assert c.fingerprint == a.fingerprint
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["files"][0]["sha256"] == a.files[0].sha256
    assert m["files"][0]["precision"] == "fp32"


def test_changed_model_file_is_refused_with_its_name(tmp_path: Path, tiny_onnx: Path) -> None:
    root = make_bundle(tmp_path / "b", tiny_onnx)
    data = bytearray((root / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (root / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx does not match its manifest") as e:
        load_bundle(root)
    assert "rebuild" in str(e.value)


def test_missing_file_manifest_and_folder(tmp_path: Path, tiny_onnx: Path) -> None:
    root = make_bundle(tmp_path / "b", tiny_onnx)
    (root / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"model\.onnx listed in the manifest is missing"):
        load_bundle(root)
    with pytest.raises(BundleError, match=r"manifest\.json missing"):
        load_bundle(tmp_path / "nowhere")
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable manifest"):
        load_bundle(root)


def test_hand_edited_manifest_is_refused(tmp_path: Path, tiny_onnx: Path) -> None:
    root = make_bundle(tmp_path / "b", tiny_onnx)
    m = json.loads((root / "manifest.json").read_text())
    m["preprocess"]["mean"] = [0.5, 0.5, 0.5]
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="fingerprint"):
        load_bundle(root)


def test_wrong_modality_and_missing_precision(tmp_path: Path, tiny_onnx: Path) -> None:
    root = make_bundle(tmp_path / "b", tiny_onnx)
    with pytest.raises(BundleError, match="is a image bundle, expected text"):
        load_bundle(root, modality="text")
    with pytest.raises(BundleError, match="has no int8 model for backend onnxruntime"):
        OnnxImageEncoder(bundle=load_bundle(root), precision="int8")


@pytest.mark.parametrize("encoder", [OnnxImageEncoder, OpenVinoImageEncoder])
def test_model_output_not_matching_manifest_is_refused(tmp_path: Path, tiny_onnx: Path, encoder: type) -> None:
    bundle = load_bundle(make_bundle(tmp_path / "b", tiny_onnx, out_dim=32))  # model gives 16
    with pytest.raises(ModelMismatchError, match=r"output 'embedding' has shape .*16.*manifest says .*32"):
        encoder(bundle=bundle, precision="fp32")


@pytest.mark.parametrize("encoder", [OnnxImageEncoder, OpenVinoImageEncoder])
def test_model_input_not_matching_manifest_is_refused(tmp_path: Path, tiny_onnx: Path, encoder: type) -> None:
    bundle = load_bundle(make_bundle(tmp_path / "b", tiny_onnx, size=48))  # model takes 32
    with pytest.raises(ModelMismatchError, match=r"input 'input' has shape .*32, 32.*manifest says .*48, 48"):
        encoder(bundle=bundle, precision="fp32")


def test_good_bundle_runs_on_both_backends(tmp_path: Path, tiny_onnx: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path / "b", tiny_onnx))
    img = np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)
    a = OnnxImageEncoder(bundle=bundle, precision="fp32").embed([img, img[::-1]])
    b = OpenVinoImageEncoder(bundle=bundle, precision="fp32").embed([img, img[::-1]])
    assert a.shape == (2, 16) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert float((a * b).sum(axis=1).min()) >= 0.9999


def test_default_bundles_are_committed_and_verify() -> None:
    image = load_bundle(default_bundle_path("image"), modality="image")
    text = load_bundle(default_bundle_path("text"), modality="text")
    assert image.parity["passed"] is True and text.parity["passed"] is True
    size = sum(f.size for f in image.files)
    assert size <= 32 * 2**20, f"image bundle is {size} bytes"  # budget 32 MB in all (MiB, as du/ls -h count)
    int8 = {f.path: f.size for f in image.files if f.precision != "fp32" and f.path.endswith((".onnx", ".bin"))}
    assert int8 and max(int8.values()) <= 6 * 2**20, int8  # each int8 model file within 6 MB
    assert sum(f.size for f in text.files) <= 30_000_000
    assert {f.precision for f in image.files if f.role == "model"} == {"fp32", "int8-qdq", "openvino-int8"}
    with pytest.raises(BundleError, match="unknown bundle modality"):
        default_bundle_path("audio")
