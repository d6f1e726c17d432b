"""Training: a tiny run on generated product photos writes a resumable checkpoint and a report."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.requires import need_module

torch = need_module("torch", "pip install -e '.[export]' (.ci/run installs it)")

from export.data import read_folder, read_split  # noqa: E402
from export.model import EncoderArch  # noqa: E402
from export.train import TrainConfig, retrieval_metrics, train  # noqa: E402

TINY = EncoderArch(widths=(8, 16), blocks=(1, 1), stem=8, embedding_dim=16)


def make_catalog(root: Path, n_classes: int = 3, per_class: int = 12) -> None:
    rng = np.random.default_rng(0)
    colours = [(40, 40, 220), (40, 200, 40), (220, 60, 40), (30, 200, 220)]
    for c in range(n_classes):
        d = root / f"sku-{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = np.full((64, 64, 3), 200, np.uint8)
            cx, cy = rng.integers(20, 44, 2)
            cv2.circle(img, (int(cx), int(cy)), 14, colours[c], -1)
            cv2.imwrite(str(d / f"{i}.jpg"), img)
    (root / "sku-0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_tiny_training_resumes_and_reports(tmp_path: Path) -> None:
    make_catalog(tmp_path / "cat")
    samples, skus = read_folder(tmp_path / "cat")
    cfg = TrainConfig(
        epochs=2, batch_size=8, input_size=32, carve="random", carve_per_class=2, eval_every=1, threads=1
    )
    out = tmp_path / "run"
    report = train(samples, dict(enumerate(skus)), out, cfg, arch=TINY)
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert report["history"][-1]["carved_val"]["n_queries"] == 6  # 2 photos of each of 3 products
    assert report["skipped"][0][0].endswith("broken.jpg")
    assert {"checkpoint.pt", "encoder.pt", "report.json", "curves.png"} <= {p.name for p in out.iterdir()}
    # resume: a longer schedule continues from epoch 3, it does not start over
    cfg3 = TrainConfig(**{**cfg.__dict__, "epochs": 3})
    report3 = train(samples, dict(enumerate(skus)), out, cfg3, arch=TINY)
    assert [h["epoch"] for h in report3["history"]] == [1, 2, 3]
    assert json.loads((out / "report.json").read_text())["n_train_classes"] == 3


def test_triplet_baseline_runs(tmp_path: Path) -> None:
    make_catalog(tmp_path / "cat")
    samples, skus = read_folder(tmp_path / "cat")
    cfg = TrainConfig(
        epochs=1, batch_size=8, input_size=32, carve="random", carve_per_class=2, threads=1, loss="triplet"
    )
    report = train(samples, dict(enumerate(skus)), tmp_path / "run", cfg, arch=TINY)
    assert np.isfinite(report["history"][0]["loss"])


def test_retrieval_metrics_are_macro_averaged() -> None:
    g = np.eye(3, dtype=np.float32)
    gl = np.array([0, 1, 2])
    q = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0.1, 1]], np.float32)
    ql = np.array([0, 0, 0, 1])  # class 0: 3/3 right; class 1: 0/1 right
    m = retrieval_metrics(q, ql, g, gl)
    assert m["macro_r1"] == pytest.approx(0.5)
    assert m["micro_r1"] == pytest.approx(0.75)


def test_split_file_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "s.txt"
    f.write_text("a.jpg, 0, 0\nb.jpg, x, 0\n")
    from edge.core.errors import InputError

    with pytest.raises(InputError, match=r"s.txt:2: labels must be integers"):
        read_split(f)


def test_sessions_carve_holds_out_whole_sessions() -> None:
    from export.carve import carve_sessions

    rng = np.random.default_rng(0)
    # two products, each with three sessions of near-identical photos (4 photos a session)
    centres = rng.normal(size=(6, 32))
    thumbs = np.concatenate([c + 0.01 * rng.normal(size=(4, 32)) for c in centres]).astype(np.float32)
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True)
    labels = [0] * 12 + [1] * 12
    session = np.repeat(np.arange(6), 4)
    tr, val = carve_sessions(labels, thumbs, fraction=0.3, threshold=0.9, rng=np.random.default_rng(1))
    assert sorted(tr + val) == list(range(24))
    held_sessions = set(session[val].tolist())
    assert len(val) == 8 and len(held_sessions) == 2  # one session (4 photos) of each product
    assert not set(np.flatnonzero(np.isin(session, list(held_sessions))).tolist()) - set(val)
    assert {labels[i] for i in val} == {0, 1}


def test_device_and_arch_flags_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.core.errors import InputError
    from export.train import arch_from_args, build_parser, pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"
    with pytest.raises(InputError, match="--device cuda asked for, but torch sees no GPU"):
        pick_device("cuda")
    args = build_parser().parse_args(["--folder", "x", "--out", "y", "--widths", "8,16", "--blocks", "1"])
    with pytest.raises(InputError, match="--widths has 2 stages but --blocks has 1"):
        arch_from_args(args)
    args = build_parser().parse_args(["--folder", "x", "--out", "y", "--widths", "8,0", "--blocks", "1,1"])
    with pytest.raises(InputError, match="must be positive"):
        arch_from_args(args)
    args = build_parser().parse_args(["--folder", "x", "--out", "y", "--kind", "resnet", "--embedding-dim", "64"])
    assert arch_from_args(args) == EncoderArch(kind="resnet", embedding_dim=64)


@pytest.mark.parametrize("kind", ["plain", "resnet"])
def test_both_encoder_kinds_embed_and_round_trip(kind: str) -> None:
    """Unit-length output of the declared size; weights and arch reload into an equal model."""
    from export.model import ProductEncoder

    arch = EncoderArch(widths=(8, 16), blocks=(1, 2), stem=8, embedding_dim=12, kind=kind)
    model = ProductEncoder(arch).eval()
    x = torch.randn(3, 3, 40, 40)
    y = model(x)
    assert y.shape == (3, 12)
    assert torch.allclose(y.norm(dim=1), torch.ones(3), atol=1e-5)
    again = ProductEncoder(EncoderArch.from_dict(arch.to_dict())).eval()
    again.load_state_dict(model.state_dict())
    assert torch.equal(again(x), y)


def test_checkpoint_from_before_kinds_loads_as_resnet() -> None:
    """Old encoder.pt files: no `kind` in the arch, resnet weights at the top level of the state dict."""
    from export.model import ProductEncoder

    arch = EncoderArch(widths=(8, 16), blocks=(1, 1), stem=8, embedding_dim=16, kind="resnet")
    model = ProductEncoder(arch).eval()
    old_arch = {k: v for k, v in arch.to_dict().items() if k != "kind"}
    old_state = {k.removeprefix("net."): v for k, v in model.state_dict().items()}
    keys = list(old_state)
    loaded = ProductEncoder(EncoderArch.from_dict(old_arch)).eval()
    loaded.load_state_dict(old_state)
    assert list(old_state) == keys  # the caller's mapping is not rewritten
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="unknown encoder kind 'vit'"):
        ProductEncoder(EncoderArch(kind="vit"))
