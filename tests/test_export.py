"""Export stage end to end on a tiny torch encoder: fp32 ONNX, int8 QDQ, OpenVINO int8, parity, bundle.

The catalog is drawn here with OpenCV (coloured shapes per product, jittered), written as JPEGs
under tmp_path, plus one truncated and one non-image file that must be reported and skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge.core.errors import InputError, ParityError
from edge.models.bundle import load_bundle
from edge.models.encoders.onnx import OnnxImageEncoder
from edge.models.encoders.openvino import OpenVinoImageEncoder
from edge.models.preprocess import PreprocessSpec
from export.bundle import BuildResult, build_image_bundle
from export.cli import main as export_main
from export.data import Sample, read_split
from export.model import EncoderArch, ProductEncoder
from export.parity import compare, gate, retrieval_metrics

COLOURS = [(40, 40, 220), (40, 200, 40), (220, 60, 40), (30, 200, 230), (200, 40, 200), (120, 120, 120)]
N_PER_PRODUCT = 12


def draw_product(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A product 'photo': a shape and colour per product, random position, scale, background and noise."""
    bg = int(rng.integers(150, 255))
    img = np.full((size, size, 3), bg, np.uint8)
    c = tuple(int(np.clip(v + rng.integers(-25, 25), 0, 255)) for v in COLOURS[label % len(COLOURS)])
    cx, cy = (int(v) for v in rng.integers(22, size - 22, 2))
    r = int(rng.integers(12, 20))
    shape = label % 3
    if shape == 0:
        cv2.circle(img, (cx, cy), r, c, -1)
    elif shape == 1:
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), c, -1)
    else:
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(img, [pts], c)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def write_catalog(root: Path, n_products: int = 6) -> Path:
    """Grocery-Store-style split file (path, fine, coarse) + images; two broken files listed too."""
    rng = np.random.default_rng(7)
    lines = []
    for label in range(n_products):
        for k in range(N_PER_PRODUCT):
            rel = Path("train") / "Fruit" / f"p{label}" / f"p{label}_{k:02d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / rel), draw_product(label, rng))
            lines.append(f"{rel}, {label}, {label // 2}")
    good = (root / "train/Fruit/p0/p0_00.jpg").read_bytes()
    (root / "train/Fruit/p0/truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "train/Fruit/p1/not-an-image.jpg").write_text("hello")
    lines += ["train/Fruit/p0/truncated.jpg, 0, 0", "train/Fruit/p1/not-an-image.jpg, 1, 0"]
    split = root / "train.txt"
    split.write_text("\n".join(lines) + "\n")
    return split


def write_checkpoint(path: Path, *, seed: int = 0) -> Path:
    """A tiny ProductEncoder in the encoder.pt format export.train writes (random weights, real BN stats)."""
    torch.manual_seed(seed)
    arch = EncoderArch(widths=(8, 16), blocks=(1, 1), stem=8, embedding_dim=16)
    model = ProductEncoder(arch)
    model.train()
    with torch.no_grad():  # give BatchNorm real running statistics, as training would
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
    spec = PreprocessSpec(input_size=32)
    torch.save({"ema": model.state_dict(), "arch": arch.to_dict(), "preprocess": spec.to_dict(),
                "classes": {i: f"p{i}" for i in range(6)},
                "report": {"config": {"seed": 0, "carve_per_class": 2, "holdout_classes": 0}}}, path)
    return path


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Sample], Path]:
    root = tmp_path_factory.mktemp("catalog")
    split = write_catalog(root)
    return split, read_split(split), write_checkpoint(root / "encoder.pt")


@pytest.fixture(scope="module")
def built(catalog: tuple[Path, list[Sample], Path], tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    _, samples, ckpt = catalog
    out = tmp_path_factory.mktemp("bundles") / "image"
    return build_image_bundle(checkpoint=ckpt, samples=samples, out=out, calib_images=40, threads=1, progress=False,
                              max_r1_drop=0.5)


def test_bundle_holds_three_formats_with_hashes_and_provenance(built: BuildResult) -> None:
    b = load_bundle(built.bundle.root)
    precisions = sorted((f.precision, f.backend, f.role) for f in b.files)
    assert precisions == [("fp32", "onnxruntime", "model"), ("int8-qdq", "onnxruntime", "model"),
                          ("openvino-int8", "openvino", "model"), ("openvino-int8", "openvino", "weights")]
    assert b.embedding_dim == 16 and b.preprocess == PreprocessSpec(input_size=32)
    assert b.parity["passed"] is True and b.parity["forced"] is False
    assert {c["candidate"] for c in b.parity["int8-qdq-candidates"]} == {"int8-qdq per-tensor", "int8-qdq per-channel"}
    assert b.parity["held_out"]["queries"] == 12  # 2 carved images x 6 products, never in calibration
    prov = b.provenance
    assert prov["training"]["config"]["carve_per_class"] == 2
    assert set(prov["tools"]) >= {"torch", "onnxruntime", "openvino", "nncf", "onnx"}
    assert len(prov["data"]["digest"]) == 16
    assert prov["calibration"]["openvino-int8"]["ignored_scope"]  # the pooling/projection tail stays fp32
    assert "/net/ReduceMean" in prov["calibration"]["openvino-int8"]["ignored_scope"]  # global average pooling
    # This random tiny encoder recalls better whitened, but whitening stretches its int8 noise past the
    # cosine gate (OpenVINO ~0.89): auto mode then ships it unwhitened and says why.
    white = prov["whitening"]
    assert white["mode"] == "auto" and white["held_out_macro_r1"]["with"] > white["held_out_macro_r1"]["without"]
    assert white["applied"] is False and white["dropped_because"].startswith("int8 parity: ")


def test_int8_models_keep_the_stem_and_the_tail_fp32(built: BuildResult) -> None:
    import onnx

    g = onnx.load(str(built.bundle.root / "image-int8.onnx")).graph
    made_by = {o: n for n in g.node for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    weight_src = [made_by[c.input[1]].op_type if c.input[1] in made_by else "initializer" for c in convs]
    assert weight_src[0] == "initializer"  # the 3-channel stem runs fp32
    assert set(weight_src[1:]) == {"DequantizeLinear"}  # every other convolution is int8
    last = max(i for i, n in enumerate(g.node) if n.op_type == "Conv")
    # after the last convolution only its own output is (de)quantized once; pooling etc. run fp32
    qdq = sorted(n.op_type for n in g.node[last + 1 :] if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    assert qdq in ([], ["DequantizeLinear", "QuantizeLinear"])
    assert [n for n in g.node[last + 1 :] if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    ignored = built.bundle.provenance["calibration"]["openvino-int8"]["ignored_scope"]
    assert ignored[0].startswith(convs[0].name)  # OpenVINO keeps the same stem fp32 (ONNX names carry over)


def test_unreadable_catalog_images_are_reported_and_counted(built: BuildResult) -> None:
    skipped = dict(built.skipped)
    assert len(skipped) == 2
    assert sorted(Path(p).name for p in skipped) == ["not-an-image.jpg", "truncated.jpg"]
    assert any("truncated" in r for r in skipped.values())
    assert built.bundle.provenance["skipped_images"]["count"] == 2


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnxruntime_and_openvino_agree_on_the_bundle(built: BuildResult, precision: str) -> None:
    rng = np.random.default_rng(3)
    imgs = [draw_product(i % 6, rng, size=80) for i in range(10)]
    a = OnnxImageEncoder(bundle=built.bundle, precision=precision, threads=1).embed(imgs)
    b = OpenVinoImageEncoder(bundle=built.bundle, precision=precision, threads=1).embed(imgs)
    assert a.shape == b.shape == (10, 16)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert float((a * b).sum(axis=1).min()) >= 0.99


def test_int8_matches_fp32_export_and_torch(built: BuildResult, catalog: tuple[Path, list[Sample], Path]) -> None:
    from edge.models.preprocess import prepare_batch

    rng = np.random.default_rng(4)
    imgs = [draw_product(i % 6, rng) for i in range(8)]
    fp32 = OnnxImageEncoder(bundle=built.bundle, precision="fp32").embed(imgs)
    st = torch.load(catalog[2], weights_only=False)
    model = ProductEncoder(EncoderArch.from_dict(st["arch"])).eval()
    model.load_state_dict(st["ema"])
    with torch.no_grad():
        ref = model(torch.from_numpy(prepare_batch(imgs, PreprocessSpec(input_size=32)))).numpy()
    np.testing.assert_allclose(fp32, ref, atol=1e-4)  # L2 norm inside the graph, same preprocessing
    int8 = OnnxImageEncoder(bundle=built.bundle, precision="int8").embed(imgs)
    assert float((int8 * fp32).sum(axis=1).mean()) >= 0.98


def test_parity_failure_keeps_last_good_bundle(built: BuildResult, catalog: tuple[Path, list[Sample], Path]) -> None:
    _, samples, ckpt = catalog
    out = built.bundle.root
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(ParityError, match=r"parity gate failed: .*mean cosine .*macro R@1") as e:
        build_image_bundle(checkpoint=ckpt, samples=samples, out=out, calib_images=40, threads=1, progress=False,
                           max_r1_drop=-2.0)  # a recall gain of 200 points: cannot pass
    assert "last good bundle was kept" in str(e.value)
    assert (out / "manifest.json").read_bytes() == before
    assert load_bundle(out).fingerprint == built.bundle.fingerprint
    assert sorted(p.name for p in out.parent.iterdir()) == ["image"]  # no temp folder left beside it


def test_failed_export_midway_keeps_last_good_bundle(built: BuildResult,
                                                     catalog: tuple[Path, list[Sample], Path]) -> None:
    _, samples, ckpt = catalog
    out = built.bundle.root
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(InputError, match="no calibration images"):
        build_image_bundle(checkpoint=ckpt, samples=samples, out=out, calib_images=0, threads=1, progress=False)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["image"]


def test_force_installs_and_records_the_failure(catalog: tuple[Path, list[Sample], Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    split, _, ckpt = catalog
    out = tmp_path / "forced"
    rc = export_main(["bundle", "--checkpoint", str(ckpt), "--split", str(split), "--out", str(out),
                      "--calib-images", "30", "--threads", "1", "--max-r1-drop", "-2", "--force",
                      "--json", str(tmp_path / "parity.json")])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["parity"]["passed"] is False and m["parity"]["forced"] is True
    assert m["parity"]["int8-qdq"]["passed"] is False
    assert json.loads((tmp_path / "parity.json").read_text())["parity"]["forced"] is True
    assert "FAILED (forced)" in capsys.readouterr().out
    load_bundle(out)  # a forced bundle still verifies: the failure is recorded, not hidden


def test_gate_and_compare_figures() -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((12, 8)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    gl = np.repeat(np.arange(4), 3)
    q = g[::3] + 0.01
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ql = np.arange(4)
    same = compare("same", q, g, q, g, ql, gl)
    assert same.passed and same.mean_cosine == pytest.approx(1.0, abs=1e-6) and same.r1_drop == 0.0
    assert same.ref_macro_r1 == 1.0
    wrong = compare("shuffled", q, g, q[::-1], g[::-1], ql, gl)  # a corrupted model: right shapes, wrong vectors
    assert not wrong.passed
    gate([same])
    with pytest.raises(ParityError, match="shuffled: FAIL"):
        gate([same, wrong])
    gate([wrong], force=True)


def test_retrieval_metrics_exact() -> None:
    # 2 products, gallery: product 0 at e0 and e1, product 1 at e2; queries near e1 (0), e2 (1), e0 (1: a miss)
    e = np.eye(3, dtype=np.float32)
    g, gl = e, np.array([0, 0, 1])
    q, ql = np.stack([e[1], e[2], e[0]]), np.array([0, 1, 1])
    m = retrieval_metrics(q, ql, g, gl, coarse_of={0: 0, 1: 0}, q_groups=["Fruit", "Fruit", "Packages"])
    assert m["micro_r1"] == pytest.approx(2 / 3)
    assert m["macro_r1"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["macro_r5"] == 1.0
    assert m["coarse_r1"] == 1.0  # both products share a coarse class
    assert m["group_r1"] == {"Fruit": 1.0, "Packages": 0.0}
    # AP: q0 relevant {e0,e1} ranked e1 first then e0 -> 1.0; q1 -> 1.0; q2 relevant {e2} ranked last of 3 -> 1/3
    assert m["map"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert (m["n_queries"], m["n_classes"]) == (3, 2)
