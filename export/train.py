"""Train the product image encoder with metric learning (``storelens export train``).

Recipe (chosen for ~30 photos a product and no pretraining): a compact VGG-style CNN,
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

from edge.core.errors import InputError
from edge.models.preprocess import PreprocessSpec
from export.augment import AugmentConfig, augment
from export.backbones import BACKBONES
from export.data import Sample, decode_samples, read_split
from export.evaluate import (  # shared with export/finetune.py; re-exported here for export.bundle and tests
    carve,
    embed,
    evaluate_split,
    load_samples,
    pick_device,
    plot_curves,
    retrieval_metrics,
)
from export.model import CosineHead, EncoderArch, ProductEncoder

__all__ = ["TrainConfig", "arch_from_args", "build_parser", "carve", "embed", "evaluate_split", "load_samples",
           "main", "pick_device", "plot_curves", "retrieval_metrics", "train"]

log = logging.getLogger("storelens.train")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 80
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-4
    warmup_epochs: int = 3
    input_size: int = 144
    cache_scale: float = 1.25
    ema_decay: float = 0.998
    margin: float = 0.2
    scale: float = 30.0
    label_smoothing: float = 0.1
    erase_p: float = AugmentConfig.erase_p  # augmentation: defaults live in export/augment.py
    crop_min_area: float = AugmentConfig.crop_min_area
    rotate_deg: float = AugmentConfig.rotate_deg
    jitter: float = AugmentConfig.jitter
    carve: str = "sessions"  # sessions (hold out whole photo sessions) | random | none
    carve_per_class: int = 3  # random carve: photos a product
    carve_fraction: float = 0.15  # sessions carve: share of each product's photos
    session_threshold: float = 0.6  # sessions carve: thumbnail cosine that links two photos
    holdout_classes: int = 0
    eval_every: int = 5
    seed: int = 0
    threads: int = 2
    loss: str = "cosface"  # cosface (normalised softmax) | triplet (batch-hard, P x K batches)
    device: str = "auto"  # auto (cuda when present) | cpu | cuda

    def augment_config(self) -> AugmentConfig:
        return AugmentConfig(self.crop_min_area, self.rotate_deg, self.jitter, self.erase_p)


# ---------------------------------------------------------------- training
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
    cache_dir = out / "cache"
    tr_idx, cv_idx = carve(samples, cfg, rng, cache_dir)
    if cfg.carve != "none":
        log.info(
            "carve=%s held out %d photos of %d products for validation",
            cfg.carve,
            len(cv_idx),
            len({samples[i].label for i in cv_idx}),
        )
        if not cv_idx:
            log.warning("the %s carve held out no photos: no validation figures this run", cfg.carve)
    dev = pick_device(cfg.device)
    aug = cfg.augment_config()
    big = decode_samples(samples, cache_px, cache_dir)
    small = decode_samples(samples, cfg.input_size, cache_dir)
    if big.skipped:
        log.warning("skipped %d unreadable images (see report.json)", len(big.skipped))
    pos = {str(s.path): i for i, s in enumerate(big.samples)}
    tr = [pos[str(samples[i].path)] for i in tr_idx if str(samples[i].path) in pos and samples[i].label not in held]
    train_labels_all = big.labels[tr]
    label_map = {c: i for i, c in enumerate(sorted(set(train_labels_all.tolist())))}
    y_train = torch.tensor([label_map[int(c)] for c in train_labels_all], device=dev)
    x_train = torch.from_numpy(big.pixels[tr]).to(dev)

    model = ProductEncoder(arch or EncoderArch()).to(dev, memory_format=torch.channels_last)  # type: ignore[call-overload]
    head = CosineHead(model.arch.embedding_dim, len(label_map), cfg.scale, cfg.margin).to(dev)
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
        st = torch.load(ckpt, weights_only=False, map_location=dev)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        head.load_state_dict(st["head"])
        opt.load_state_dict(st["opt"])
        history = st["history"]
        start_epoch = st["epoch"] + 1
        torch.set_rng_state(st["torch_rng"])
        log.info("resumed from %s at epoch %d", ckpt, start_epoch)
    g = torch.Generator().manual_seed(cfg.seed + start_epoch)
    pairs = list(zip(ema.state_dict().values(), model.state_dict().values(), strict=True))
    ema_float = [pe for pe, _ in pairs if pe.dtype.is_floating_point]
    model_float = [pm for pe, pm in pairs if pe.dtype.is_floating_point]
    ema_other = [(pe, pm) for pe, pm in pairs if not pe.dtype.is_floating_point]

    def eval_carved(m: ProductEncoder) -> dict[str, float]:
        cv = [pos[str(samples[i].path)] for i in cv_idx if str(samples[i].path) in pos and samples[i].label not in held]
        gal = [i for i in tr]
        e_g, e_q = embed(m, small.pixels[gal], spec), embed(m, small.pixels[cv], spec)
        return retrieval_metrics(e_q, small.labels[cv], e_g, small.labels[gal])

    t0 = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        perm = torch.randperm(len(tr), generator=g).to(dev)
        batches = (
            [b.to(dev) for b in pk_batches(y_train.cpu(), cfg.batch_size, 4, g)]
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
            x = augment(x_train[idx], cfg.input_size, spec, g, aug)
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
                torch._foreach_mul_(ema_float, d)
                torch._foreach_add_(ema_float, model_float, alpha=1 - d)
                for pe, pm in ema_other:
                    pe.copy_(pm)
            losses.append(loss.detach())
            correct += (logits.argmax(1) == y_train[idx]).sum()
            if b % 10 == 0:
                bar.set_postfix(loss=f"{float(losses[-1]):.3f}")
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(torch.stack(losses).mean()),
            "train_acc": int(correct) / (steps_per_epoch * cfg.batch_size),
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
            "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
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
            "ema": {k: v.cpu() for k, v in ema.state_dict().items()},
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
    for name in ("epochs", "batch_size", "input_size", "holdout_classes", "carve_per_class", "seed", "threads",
                 "eval_every"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "margin", "scale", "ema_decay", "label_smoothing", "crop_min_area",
                 "rotate_deg", "jitter", "erase_p", "carve_fraction", "session_threshold"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument(
        "--carve",
        choices=("sessions", "random", "none"),
        default=d.carve,
        help="validation carved from the training catalog: whole photo sessions (like new stores), "
        "random photos (same sessions as training: optimistic), or none",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="auto: a GPU when present")
    p.add_argument(
        "--loss",
        choices=("cosface", "triplet"),
        default=d.loss,
        help="cosface: normalised softmax with margin (default); triplet: batch-hard Siamese baseline",
    )
    a = EncoderArch()
    p.add_argument(
        "--kind",
        choices=("plain", "resnet"),
        default=a.kind,
        help="plain: VGG-style convs + max-pooling (default, best measured); resnet: the first model",
    )
    p.add_argument("--widths", default=",".join(map(str, a.widths)), help="channels a stage (default: %(default)s)")
    p.add_argument(
        "--blocks",
        default=",".join(map(str, a.blocks)),
        help="3x3 convs (plain) or residual blocks (resnet) a stage (default: %(default)s)",
    )
    p.add_argument("--stem", type=int, default=a.stem, help="channels of the strided stem conv (default: %(default)s)")
    p.add_argument(
        "--embedding-dim", type=int, default=a.embedding_dim, help="embedding length (default: %(default)s)"
    )
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--backbone", choices=("plain", *sorted(BACKBONES)), default="plain",
                   help="plain: this from-scratch recipe; a pretrained backbone fine-tunes it instead, with its own "
                   "flags (see `storelens export train --backbone efficientnet-lite0 --help`)")
    return p


def arch_from_args(args: argparse.Namespace) -> EncoderArch:
    try:
        widths = tuple(int(x) for x in args.widths.split(","))
        blocks = tuple(int(x) for x in args.blocks.split(","))
    except ValueError as e:
        raise InputError(f"--widths/--blocks must be comma-separated integers ({e})") from e
    if len(widths) != len(blocks):
        raise InputError(
            f"--widths has {len(widths)} stages but --blocks has {len(blocks)}", hint="give both the same count"
        )
    if min(widths + blocks) < 1 or args.stem < 1 or args.embedding_dim < 1:
        raise InputError("--widths, --blocks, --stem and --embedding-dim must be positive")
    return EncoderArch(widths=widths, blocks=blocks, stem=args.stem, embedding_dim=args.embedding_dim, kind=args.kind)


def main(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--backbone", default="plain")
    known, _ = pre.parse_known_args(argv)
    if known.backbone != "plain":  # a pretrained backbone has its own recipe and flags (export/finetune.py)
        from export.finetune import main as finetune_main

        return finetune_main(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s")
    samples, names = load_samples(args)
    cfg = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.__dataclass_fields__ if hasattr(args, k)})
    val = read_split(Path(args.val)) if args.val else None
    report = train(samples, names, Path(args.out), cfg, val, resume=not args.no_resume, arch=arch_from_args(args))
    print(json.dumps(report.get("val", {}), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
