"""Train the product image encoder with metric learning (``storelens export train``).

Recipe (chosen for ~30 photos a product and no pretraining): a compact ResNet-style CNN,
normalised-softmax (CosFace) loss with label smoothing, strong geometric augmentation and
colour jitter that keeps hue (colour tells products apart), random erasing, SGD with a
cosine schedule and an EMA of the weights, which is what gets exported. Retrieval quality
is measured by nearest neighbour on a validation carved from train, never the val split
(reported once at the end).

Open-set: ``--holdout-classes N`` trains without N products and reports their recall when
enrolled afterwards from their training photos — what a store adding products sees.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge.preprocess import PreprocessSpec, normalise
from export.data import DecodedSet, Sample, decode_samples, read_classes, read_folder, read_split
from export.model import CosineHead, EncoderArch, ProductEncoder

log = logging.getLogger("storelens.train")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 80
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-4
    warmup_epochs: int = 3
    input_size: int = 128
    cache_scale: float = 1.25
    ema_decay: float = 0.998
    margin: float = 0.2
    scale: float = 30.0
    label_smoothing: float = 0.1
    erase_p: float = 0.25
    carve_per_class: int = 3
    holdout_classes: int = 0
    eval_every: int = 5
    seed: int = 0
    threads: int = 2
    loss: str = "cosface"  # cosface (normalised softmax) | triplet (batch-hard, P x K batches)


# ---------------------------------------------------------------- augmentation (batched)
def augment(pix: torch.Tensor, out: int, spec: PreprocessSpec, g: torch.Generator, erase_p: float) -> torch.Tensor:
    """uint8 (N, S, S, 3) RGB -> normalised float (N, 3, out, out), random per sample.

    Random-resized crop, flip and a small rotation in one affine warp; brightness, contrast and
    saturation jitter (no hue shift: colour is what tells a green apple from a yellow one);
    random erasing for occlusion by hands and shelf edges.
    """
    n = pix.shape[0]
    x = pix.permute(0, 3, 1, 2).float().div_(255.0)
    area = torch.empty(n).uniform_(0.30, 1.0, generator=g)
    logr = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
    sx = (area.sqrt() * logr.exp().sqrt()).clamp(max=1.0)
    sy = (area.sqrt() / logr.exp().sqrt()).clamp(max=1.0)
    tx = (torch.rand(n, generator=g) * 2 - 1) * (1 - sx)
    ty = (torch.rand(n, generator=g) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    ang = (torch.rand(n, generator=g) * 2 - 1) * math.radians(15)
    c, s = ang.cos(), ang.sin()
    theta = torch.stack([torch.stack([sx * c * flip, -sy * s, tx], 1), torch.stack([sx * s * flip, sy * c, ty], 1)], 1)
    grid = F.affine_grid(theta, [n, 3, out, out], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    bright = torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=g)
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=g)
    sat = torch.empty(n, 1, 1, 1).uniform_(0.75, 1.25, generator=g)
    x = x * bright
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = ((x - grey) * sat + grey).clamp_(0, 1)
    m = torch.tensor(spec.mean).view(1, 3, 1, 1)
    sd = torch.tensor(spec.std).view(1, 3, 1, 1)
    x = (x - m) / sd
    for i in torch.nonzero(torch.rand(n, generator=g) < erase_p).flatten().tolist():
        eh, ew = (torch.randint(out // 5, out // 2, (2,), generator=g)).tolist()
        y0, x0 = (
            torch.randint(0, out - eh, (1,), generator=g).item(),
            torch.randint(0, out - ew, (1,), generator=g).item(),
        )
        x[i, :, y0 : y0 + eh, x0 : x0 + ew] = torch.randn(3, eh, ew, generator=g) * 0.5
    return x.contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def embed(model: ProductEncoder, pixels: np.ndarray, spec: PreprocessSpec, batch: int = 128) -> np.ndarray:
    """Embed uint8 RGB (N, S, S, 3) already at the model's input size, as the edge would."""
    model.eval()
    out = []
    for i in range(0, len(pixels), batch):
        x = torch.from_numpy(normalise(pixels[i : i + batch], spec)).contiguous(memory_format=torch.channels_last)
        out.append(model(x).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.arch.embedding_dim), np.float32)


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


# ---------------------------------------------------------------- training
def carve(samples: list[Sample], per_class: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Split indices into (train, carved-validation) with ``per_class`` images a product held out."""
    by: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by.setdefault(s.label, []).append(i)
    val: list[int] = []
    for idx in by.values():
        if len(idx) > per_class * 3:
            val += rng.choice(idx, per_class, replace=False).tolist()
    vs = set(val)
    return [i for i in range(len(samples)) if i not in vs], sorted(val)


def lr_at(step: int, total: int, warm: int, base: float) -> float:
    if step < warm:
        return base * (step + 1) / warm
    return 0.5 * base * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def batch_hard_triplet(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Siamese/triplet baseline: hardest positive vs hardest negative per anchor (cosine distance)."""
    e = F.normalize(emb, dim=1)
    d = 1 - e @ e.t()
    same = labels[:, None] == labels[None, :]
    pos = (d * same.float()).max(1).values
    neg = (d + same.float() * 4).min(1).values
    return F.relu(pos - neg + margin).mean()


def pk_batches(labels: torch.Tensor, batch: int, k: int, g: torch.Generator) -> list[torch.Tensor]:
    """Batches of P products x K photos each, so every anchor has positives (triplet loss)."""
    by = {int(c): torch.nonzero(labels == c).flatten() for c in labels.unique()}
    classes = torch.tensor(sorted(by))
    out = []
    for _ in range(max(1, len(labels) // batch)):
        pick = classes[torch.randperm(len(classes), generator=g)[: batch // k]]
        out.append(torch.cat([by[int(c)][torch.randint(len(by[int(c)]), (k,), generator=g)] for c in pick]))
    return out


def train(
    samples: list[Sample],
    class_names: dict[int, str],
    out: Path,
    cfg: TrainConfig,
    val_split: list[Sample] | None = None,
    resume: bool = True,
    arch: EncoderArch | None = None,
) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    spec = PreprocessSpec(input_size=cfg.input_size)
    cache_px = round(cfg.input_size * cfg.cache_scale)

    all_labels = sorted({s.label for s in samples})
    held = sorted(rng.choice(all_labels, cfg.holdout_classes, replace=False).tolist()) if cfg.holdout_classes else []
    tr_idx, cv_idx = carve(samples, cfg.carve_per_class, rng)
    cache_dir = out / "cache"
    big = decode_samples(samples, cache_px, cache_dir)
    small = decode_samples(samples, cfg.input_size, cache_dir)
    if big.skipped:
        log.warning("skipped %d unreadable images (see report.json)", len(big.skipped))
    pos = {str(s.path): i for i, s in enumerate(big.samples)}
    tr = [pos[str(samples[i].path)] for i in tr_idx if str(samples[i].path) in pos and samples[i].label not in held]
    train_labels_all = big.labels[tr]
    label_map = {c: i for i, c in enumerate(sorted(set(train_labels_all.tolist())))}
    y_train = torch.tensor([label_map[int(c)] for c in train_labels_all])
    x_train = torch.from_numpy(big.pixels[tr])

    model = ProductEncoder(arch or EncoderArch()).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    head = CosineHead(model.arch.embedding_dim, len(label_map), cfg.scale, cfg.margin)
    ema = copy.deepcopy(model).eval()
    params = [p for p in list(model.parameters()) + list(head.parameters())]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0}],
        lr=cfg.lr,
        momentum=0.9,
        nesterov=True,
    )
    steps_per_epoch = max(1, len(tr) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    history: list[dict[str, Any]] = []
    start_epoch, ckpt = 0, out / "checkpoint.pt"
    if resume and ckpt.is_file():
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        head.load_state_dict(st["head"])
        opt.load_state_dict(st["opt"])
        history = st["history"]
        start_epoch = st["epoch"] + 1
        torch.set_rng_state(st["torch_rng"])
        log.info("resumed from %s at epoch %d", ckpt, start_epoch)
    g = torch.Generator().manual_seed(cfg.seed + start_epoch)

    def eval_carved(m: ProductEncoder) -> dict[str, float]:
        cv = [pos[str(samples[i].path)] for i in cv_idx if str(samples[i].path) in pos and samples[i].label not in held]
        gal = [i for i in tr]
        e_g, e_q = embed(m, small.pixels[gal], spec), embed(m, small.pixels[cv], spec)
        return retrieval_metrics(e_q, small.labels[cv], e_g, small.labels[gal])

    t0 = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        perm = torch.randperm(len(tr), generator=g)
        batches = (
            pk_batches(y_train, cfg.batch_size, 4, g)
            if cfg.loss == "triplet"
            else [perm[b * cfg.batch_size : (b + 1) * cfg.batch_size] for b in range(steps_per_epoch)]
        )
        losses, correct = [], 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr)
        for b in bar:
            step = epoch * steps_per_epoch + b
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step, total, cfg.warmup_epochs * steps_per_epoch, cfg.lr)
            idx = batches[b]
            x = augment(x_train[idx], cfg.input_size, spec, g, cfg.erase_p)
            feats = model.features(x)
            logits = head(feats, y_train[idx])
            if cfg.loss == "triplet":
                loss = batch_hard_triplet(feats, y_train[idx], cfg.margin)
            else:
                loss = F.cross_entropy(logits, y_train[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                d = min(cfg.ema_decay, (1 + step) / (10 + step))
                for pe, pm in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
                    if pe.dtype.is_floating_point:
                        pe.mul_(d).add_(pm.detach(), alpha=1 - d)
                    else:
                        pe.copy_(pm)
            losses.append(loss.item())
            correct += int((logits.argmax(1) == y_train[idx]).sum())
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "train_acc": correct / (steps_per_epoch * cfg.batch_size),
            "lr": opt.param_groups[0]["lr"],
            "elapsed_s": time.time() - t0,
        }
        if cv_idx and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            row["carved_val"] = eval_carved(ema)
        history.append(row)
        log.info(
            "epoch=%d loss=%.4f train_acc=%.3f carved_r1=%s elapsed_s=%.0f",
            row["epoch"],
            row["loss"],
            row["train_acc"],
            row.get("carved_val", {}).get("macro_r1", "-"),
            row["elapsed_s"],
        )
        torch.save(
            {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "head": head.state_dict(),
                "opt": opt.state_dict(),
                "history": history,
                "epoch": epoch,
                "torch_rng": torch.get_rng_state(),
            },
            ckpt.with_suffix(".tmp"),
        )
        ckpt.with_suffix(".tmp").replace(ckpt)

    report: dict[str, Any] = {
        "config": cfg.__dict__,
        "arch": model.arch.to_dict(),
        "preprocess": spec.to_dict(),
        "n_train_images": len(tr),
        "n_train_classes": len(label_map),
        "heldout_classes": held,
        "skipped": big.skipped,
        "history": history,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": cfg.threads,
        },
    }
    if held:
        # Open-set on the carved validation (no val split needed): held-out products are enrolled
        # from their non-carved training photos, their carved photos are the queries.
        enrolled = [pos[str(samples[i].path)] for i in tr_idx if str(samples[i].path) in pos]
        qh = [pos[str(samples[i].path)] for i in cv_idx if str(samples[i].path) in pos and samples[i].label in held]
        if qh:
            e_g, e_q = embed(ema, small.pixels[enrolled], spec), embed(ema, small.pixels[qh], spec)
            report["carved_open_set"] = retrieval_metrics(e_q, small.labels[qh], e_g, small.labels[enrolled])
    if val_split:
        report["val"] = evaluate_split(ema, spec, big, small, tr, val_split, held, class_names, cache_dir)
    torch.save(
        {
            "ema": ema.state_dict(),
            "arch": model.arch.to_dict(),
            "preprocess": spec.to_dict(),
            "classes": {int(k): v for k, v in class_names.items()},
            "report": {k: v for k, v in report.items() if k != "history"},
        },
        out / "encoder.pt",
    )
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_curves(history, out / "curves.png")
    return report


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
        ax[1].plot(*zip(*ev, strict=False), marker="o", label="carved-val macro R@1 (EMA)")
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


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(
        prog="storelens export train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", help="Grocery Store split file (path, fine, coarse), e.g. .../train.txt")
    src.add_argument("--folder", help="folder layout <root>/<sku>/*.jpg")
    p.add_argument("--val", help="split file reported once at the end (never used for tuning)")
    p.add_argument(
        "--out", required=True, help="run folder: checkpoint.pt (resumable), encoder.pt, report.json, curves.png"
    )
    d = TrainConfig()
    for name in (
        "epochs",
        "batch_size",
        "input_size",
        "holdout_classes",
        "carve_per_class",
        "seed",
        "threads",
        "eval_every",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "margin", "ema_decay"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument(
        "--loss",
        choices=("cosface", "triplet"),
        default=d.loss,
        help="cosface: normalised softmax with margin (default); triplet: batch-hard Siamese baseline",
    )
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s")
    samples, names = load_samples(args)
    cfg = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.__dataclass_fields__ if hasattr(args, k)})
    val = read_split(Path(args.val)) if args.val else None
    report = train(samples, names, Path(args.out), cfg, val, resume=not args.no_resume)
    print(json.dumps(report.get("val", {}), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
