"""Several encoders exported as one: the cosine is the members' mean, ONNX matches torch, carves must agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.requires import need_module

torch = need_module("torch", "pip install -e '.[export]' (.ci/run installs it)")

from edge.core.errors import InputError  # noqa: E402
from edge.models.preprocess import PreprocessSpec  # noqa: E402
from export.ensemble import EnsembleEncoder, load_encoders  # noqa: E402
from export.model import EncoderArch, ProductEncoder  # noqa: E402
from export.onnx import export_onnx  # noqa: E402

CONFIG = {"carve": "sessions", "carve_per_class": 3, "carve_fraction": 0.15, "session_threshold": 0.6, "seed": 0,
          "holdout_classes": 0}


def save_encoder(path: Path, *, size: int, dim: int, seed: int, config: dict[str, object] = CONFIG) -> Path:
    torch.manual_seed(seed)
    arch = EncoderArch(widths=(8, 16), blocks=(1, 1), stem=8, embedding_dim=dim, kind="plain")
    model = ProductEncoder(arch)
    torch.save({"ema": model.state_dict(), "arch": arch.to_dict(),
                "preprocess": PreprocessSpec(input_size=size).to_dict(),
                "report": {"config": dict(config), "selected_epoch": 3}, "classes": {0: "a", 1: "b"}}, path)
    return path


def test_two_encoders_give_the_mean_cosine_at_the_larger_input(tmp_path: Path) -> None:
    a = save_encoder(tmp_path / "a.pt", size=48, dim=16, seed=0)
    b = save_encoder(tmp_path / "b.pt", size=32, dim=8, seed=1)
    ck = load_encoders([a, b])
    assert isinstance(ck.model, EnsembleEncoder)
    assert ck.spec.input_size == 48 and ck.embedding_dim == 24
    assert [m["input_size"] for m in ck.report["ensemble"]] == [48, 32]
    x = torch.randn(4, 3, 48, 48)
    with torch.no_grad():
        e = ck.model(x)
        ea = load_encoders([a]).model(x)
        eb = load_encoders([b]).model(torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear"))
    assert e.shape == (4, 24)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(e @ e.T, (ea @ ea.T + eb @ eb.T) / 2, atol=1e-5, rtol=0)

    import onnxruntime as ort

    onnx_path = export_onnx(ck.model, ck.spec, tmp_path / "m.onnx", embedding_dim=ck.embedding_dim)
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, e.numpy(), atol=1e-4)


def test_members_must_share_the_carve(tmp_path: Path) -> None:
    a = save_encoder(tmp_path / "a.pt", size=32, dim=8, seed=0)
    b = save_encoder(tmp_path / "b.pt", size=32, dim=8, seed=1, config={**CONFIG, "seed": 1})
    with pytest.raises(InputError) as e:
        load_encoders([a, b])
    assert e.value.message == f"{b} carved its validation differently from {a} (seed)"
    assert "same --seed" in (e.value.hint or "")
