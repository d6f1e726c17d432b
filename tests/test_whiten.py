"""Learned whitening: fitted on labelled embeddings, applied identically in numpy and in the exported graph."""

from __future__ import annotations

import numpy as np
import pytest

from tests.requires import need_module

torch = need_module("torch", "pip install -e '.[export]' (.ci/run installs it)")

from edge.core.errors import InputError  # noqa: E402
from export.model import EncoderArch, ProductEncoder  # noqa: E402
from export.parity import retrieval_metrics  # noqa: E402
from export.whiten import WhitenedEncoder, choose_whitening, fit_whitening  # noqa: E402


def nuisance_data(rng: np.random.Generator, n_classes: int = 6, per: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Products differ a little along dims 0-5; every photo varies a lot along dims 6-7 (lighting, session)."""
    labels = np.repeat(np.arange(n_classes), per)
    x = np.zeros((len(labels), 8))
    x[np.arange(len(labels)), labels] = 0.3
    x[:, 6:] = rng.normal(0, 1.0, (len(labels), 2))
    x += rng.normal(0, 0.05, x.shape) + 1.0  # one orthant, like ReLU features
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_whitening_damps_the_directions_photos_of_one_product_vary_in() -> None:
    rng = np.random.default_rng(0)
    g, gl = nuisance_data(rng)
    q, ql = nuisance_data(rng)
    w = fit_whitening(g, gl, shrinkage=0.1)
    before = retrieval_metrics(q, ql, g, gl)["macro_r1"]
    after = retrieval_metrics(w.apply(q), ql, w.apply(g), gl)["macro_r1"]
    assert after > before + 0.3
    assert np.allclose(np.linalg.norm(w.apply(q), axis=1), 1.0, atol=1e-5)
    assert abs(float(w.apply(g).mean(0) @ np.ones(8))) < 1.0  # centred: no longer one orthant
    assert w.describe()["fitted_on"] == {"photos": 72, "products": 6}


def test_fit_refuses_bad_input() -> None:
    x = np.eye(4)
    with pytest.raises(InputError, match="shrinkage must be > 0"):
        fit_whitening(x, np.arange(4), shrinkage=0)
    with pytest.raises(InputError, match="several photos a product: 4 photos of 4 products"):
        fit_whitening(x, np.arange(4))
    with pytest.raises(InputError, match="one label a photo"):
        fit_whitening(x, np.arange(3))


def test_the_exported_module_computes_what_numpy_computes() -> None:
    rng = np.random.default_rng(1)
    enc = ProductEncoder(EncoderArch(widths=(8, 16), blocks=(1, 1), stem=8, embedding_dim=16)).eval()
    x = torch.from_numpy(rng.standard_normal((24, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        base = enc(x).numpy()
    w = fit_whitening(base, np.repeat(np.arange(6), 4))
    with torch.no_grad():
        out = WhitenedEncoder(enc, w).eval()(x).numpy()
    assert np.allclose(out, w.apply(base), atol=1e-4)


def test_choose_keeps_whitening_only_when_held_out_recall_rises() -> None:
    rng = np.random.default_rng(2)
    enc = ProductEncoder(EncoderArch(widths=(8, 16), blocks=(1, 1), stem=8, embedding_dim=16)).eval()
    gx = rng.standard_normal((24, 3, 32, 32)).astype(np.float32)
    qx = rng.standard_normal((12, 3, 32, 32)).astype(np.float32)
    gl, ql = np.repeat(np.arange(6), 4), np.repeat(np.arange(6), 2)
    model, info = choose_whitening(enc, gx, gl, qx, ql, mode="never")
    assert model is enc and info == {"mode": "never", "applied": False}
    model, info = choose_whitening(enc, gx, gl, qx, ql, mode="always")
    assert isinstance(model, WhitenedEncoder) and info["applied"] is True
    model, info = choose_whitening(enc, gx, gl, qx, ql, mode="auto")
    r1 = info["held_out_macro_r1"]
    assert isinstance(r1, dict) and info["applied"] is (r1["with"] > r1["without"])
    assert isinstance(model, WhitenedEncoder) is info["applied"]
    with pytest.raises(InputError, match="unknown whitening mode 'sometimes'"):
        choose_whitening(enc, gx, gl, qx, ql, mode="sometimes")
