"""What both training recipes share (export/train.py from scratch, export/finetune.py a pretrained
backbone): the device, the validation carve, embedding, nearest-neighbour retrieval metrics,
the val-split report, the training curves and reading the training photos.

Apart from export/train.py so that export/finetune.py uses them without importing the
from-scratch recipe (export.train dispatches to export.finetune for ``--backbone``); moved
verbatim, so both recipes measure exactly as before.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edge.core.errors import InputError
from edge.models.preprocess import PreprocessSpec, normalise
from export.carve import carve_random, carve_sessions, thumbnails
from export.data import DecodedSet, Sample, decode_samples, read_classes, read_folder, read_split
from export.model import ProductEncoder, embed_batches


class CarveConfig(Protocol):
    """The carve settings of a recipe's config (TrainConfig, FinetuneConfig; frozen dataclasses: read-only)."""

    @property
    def carve(self) -> str: ...

    @property
    def carve_per_class(self) -> int: ...

    @property
    def carve_fraction(self) -> float: ...

    @property
    def session_threshold(self) -> float: ...


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but torch sees no GPU", hint="use --device cpu or auto")
    return torch.device(name)


def carve(
    samples: list[Sample], cfg: CarveConfig, rng: np.random.Generator, cache_dir: Path | None = None
) -> tuple[list[int], list[int]]:
    """(train, carved validation) indices, as ``cfg.carve`` says (the export's parity split reuses it)."""
    labels = [s.label for s in samples]
    if cfg.carve == "none":
        return list(range(len(samples))), []
    if cfg.carve == "random":
        return carve_random(labels, cfg.carve_per_class, rng)
    if cfg.carve == "sessions":
        thumbs = thumbnails(samples, cache_dir)
        return carve_sessions(labels, thumbs, fraction=cfg.carve_fraction, threshold=cfg.session_threshold, rng=rng)
    raise InputError(f"unknown carve {cfg.carve!r}", hint="use sessions, random or none")


@torch.no_grad()
def embed(model: ProductEncoder, pixels: np.ndarray, spec: PreprocessSpec, batch: int = 128) -> np.ndarray:
    """Embed uint8 RGB (N, S, S, 3) already at the model's input size, as the edge would."""
    batches = (normalise(pixels[i : i + batch], spec) for i in range(0, len(pixels), batch))
    return embed_batches(model, batches, dim=model.arch.embedding_dim)


def retrieval_metrics(q: np.ndarray, ql: np.ndarray, g: np.ndarray, gl: np.ndarray) -> dict[str, float]:
    """Nearest-neighbour recall@1/@5 (product level: a product ranks by its best reference image)."""
    sims = q @ g.T
    classes = np.unique(gl)
    best = np.full((len(q), len(classes)), -np.inf, np.float32)
    for j, c in enumerate(classes):
        best[:, j] = sims[:, gl == c].max(axis=1)
    order = classes[np.argsort(-best, axis=1)]
    hit1 = order[:, 0] == ql
    hit5 = (order[:, :5] == ql[:, None]).any(axis=1)
    per = [hit1[ql == c].mean() for c in np.unique(ql)]
    per5 = [hit5[ql == c].mean() for c in np.unique(ql)]
    return {
        "macro_r1": float(np.mean(per)),
        "micro_r1": float(hit1.mean()),
        "macro_r5": float(np.mean(per5)),
        "n_queries": len(q),
        "n_classes": len(per),
    }


def evaluate_split(
    model: ProductEncoder,
    spec: PreprocessSpec,
    big: DecodedSet,
    small: DecodedSet,
    tr: list[int],
    val_split: list[Sample],
    held: list[int],
    names: dict[int, str],
    cache_dir: Path,
) -> dict[str, Any]:
    """Val split queries against the train-split gallery (held-out products enrolled from their photos)."""
    vs = decode_samples(val_split, spec.input_size, cache_dir)
    gal = list(range(len(small.samples)))  # every train image, held-out products enrolled after training
    e_g, e_q = embed(model, small.pixels[gal], spec), embed(model, vs.pixels, spec)
    res: dict[str, Any] = {"all": retrieval_metrics(e_q, vs.labels, e_g, small.labels[gal])}
    if held:
        hm = np.isin(vs.labels, held)
        if hm.any():
            res["heldout_enrolled"] = retrieval_metrics(e_q[hm], vs.labels[hm], e_g, small.labels[gal])
            res["seen"] = retrieval_metrics(e_q[~hm], vs.labels[~hm], e_g, small.labels[gal])
    return res


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(ep, [h["loss"] for h in history])
    ax[0].set_title("training loss")
    ax[0].set_xlabel("epoch")
    ev = [(h["epoch"], h["carved_val"]["macro_r1"]) for h in history if "carved_val" in h]
    ax[1].plot(ep, [h["train_acc"] for h in history], label="train acc (augmented)")
    if ev:
        ax[1].plot(*zip(*ev, strict=False), marker="o", label="carved-val macro R@1 (the weights exported)")
    ax[1].legend()
    ax[1].set_xlabel("epoch")
    ax[1].set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def load_samples(args: argparse.Namespace) -> tuple[list[Sample], dict[int, str]]:
    if args.split:
        split = Path(args.split)
        classes = read_classes(split.parent)
        return read_split(split), {k: v.name for k, v in classes.items()}
    samples, skus = read_folder(Path(args.folder))
    return samples, dict(enumerate(skus))
