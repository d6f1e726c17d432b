"""Fine-tune a pretrained backbone into a product encoder on 2 CPU cores (``export train --backbone``).

Recipe: the backbone's first ``freeze_blocks`` blocks stay at their ImageNet weights and run
once per image for ``views`` augmented views (crops, flips, small rotations, colour jitter that
keeps hue); their outputs are cached in fp16, so an epoch only runs the later blocks, the head
conv, GeM and the projection. Those train with CosFace, AdamW and a cosine schedule with
warm-up, the pretrained blocks at ``backbone_lr_scale`` times the new layers' rate (layer-wise
learning rates). Each epoch a sample takes one of its cached views, mirrored at random.

Model selection is on the sessions carve (whole photo sessions held out of train); the epoch
with the best carve macro R@1 is what ``encoder.pt`` holds. The val split is reported once.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge.core.errors import InputError
from edge.models.preprocess import PreprocessSpec, normalise
from export.augment import AugmentConfig, augment
from export.backbones import BACKBONES, LITE_MEAN, LITE_STD, LiteNet, locate_weights
from export.data import DecodedSet, Sample, decode_samples, read_split
from export.evaluate import carve, evaluate_split, load_samples, plot_curves, retrieval_metrics
from export.model import CosineHead, EncoderArch, ProductEncoder

log = logging.getLogger("storelens.finetune")


@dataclass(frozen=True)
class FinetuneConfig:
    backbone: str = "efficientnet-lite0"
    input_size: int = 256  # chosen on the carve over 224 (docs/decisions.md, 2026-12-02 later)
    embedding_dim: int = 256
    freeze_blocks: int = 8  # blocks 0..k-1 frozen and cached (Lite0 has 16)
    views: int = 4  # augmented views cached per photo
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3  # new layers (projection, head); pretrained blocks get lr * backbone_lr_scale
    backbone_lr_scale: float = 0.25
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    margin: float = 0.2
    scale: float = 30.0
    label_smoothing: float = 0.1
    cache_scale: float = 1.15
    crop_min_area: float = 0.35
    rotate_deg: float = 10.0
    jitter: float = 0.25
    erase_p: float = 0.2
    carve: str = "sessions"
    carve_per_class: int = 3
    carve_fraction: float = 0.15
    session_threshold: float = 0.6
    holdout_classes: int = 0
    seed: int = 0
    threads: int = 2
    device: str = "cpu"

    def check(self) -> None:
        if self.input_size % 32:
            raise InputError(f"--input-size {self.input_size} for {self.backbone} must be a multiple of 32",
                             hint="use 160, 192, 224 or 256")
        if not 0 <= self.freeze_blocks <= 15:
            raise InputError(f"--freeze-blocks {self.freeze_blocks} out of range", hint="use 0..15 (Lite0 has 16)")
        if self.views < 1:
            raise InputError("--views must be at least 1")


def _spec(cfg: FinetuneConfig) -> PreprocessSpec:
    return PreprocessSpec(input_size=cfg.input_size, mean=LITE_MEAN, std=LITE_STD)


@torch.no_grad()
def frozen_features(net: LiteNet, x: torch.Tensor, k: int, batch: int = 64) -> torch.Tensor:
    """fp16 outputs of blocks 0..k-1 for normalised inputs (N, 3, S, S)."""
    net.eval()
    return torch.cat([net.stem_to(x[i : i + batch], k).half() for i in range(0, len(x), batch)])


def cache_views(net: LiteNet, pixels: np.ndarray, cfg: FinetuneConfig, g: torch.Generator) -> torch.Tensor:
    """(views, N, C, H, W) fp16 frozen features of augmented views of uint8 (N, S', S', 3) photos."""
    spec, aug = _spec(cfg), AugmentConfig(cfg.crop_min_area, cfg.rotate_deg, cfg.jitter, cfg.erase_p)
    out = []
    for v in range(cfg.views):
        parts = []
        for i in tqdm(range(0, len(pixels), 64), desc=f"cache view {v + 1}/{cfg.views}", leave=False, file=sys.stderr):
            x = augment(torch.from_numpy(pixels[i : i + 64]), cfg.input_size, spec, g, aug)
            parts.append(frozen_features(net, x.contiguous(), cfg.freeze_blocks))
        out.append(torch.cat(parts))
    return torch.stack(out)


def clean_features(net: LiteNet, pixels: np.ndarray, cfg: FinetuneConfig) -> torch.Tensor:
    """Frozen features of un-augmented photos already at the input size (what the edge embeds)."""
    parts = [frozen_features(net, torch.from_numpy(normalise(pixels[i : i + 64], _spec(cfg))), cfg.freeze_blocks)
             for i in range(0, len(pixels), 64)]
    return torch.cat(parts) if parts else torch.zeros(0)


@torch.no_grad()
def embed_cached(net: LiteNet, feats: torch.Tensor, k: int, batch: int = 128) -> np.ndarray:
    net.eval()
    out = [F.normalize(net.forward_from(feats[i : i + batch].float(), k), dim=1) for i in range(0, len(feats), batch)]
    return torch.cat(out).numpy()


def lr_factor(step: int, total: int, warm: int) -> float:
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _optimizer(net: LiteNet, head: CosineHead, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW with layer-wise rates: pretrained blocks slower than the new projection and head."""
    new = list(net.proj.parameters()) + list(head.parameters())
    old = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("proj.")]
    groups = []
    for params, scale in ((old, cfg.backbone_lr_scale), (new, 1.0)):
        groups.append({"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay, "scale": scale})
        groups.append({"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "scale": scale})
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _freeze(net: LiteNet, k: int) -> None:
    t = net.trunk
    frozen = [t._conv_stem, t._bn0, *list(t._blocks)[:k]]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)


def _set_train(net: LiteNet, k: int) -> None:
    """Train mode for the trainable part only; the frozen blocks' BatchNorm keeps ImageNet statistics."""
    net.train()
    for m in [net.trunk._conv_stem, net.trunk._bn0, *list(net.trunk._blocks)[:k]]:
        m.eval()


@dataclass
class _Data:
    """The photos of one run: decoded sets, the carve, and the training labels."""

    big: DecodedSet  # cache size, for augmented views
    small: DecodedSet  # input size, what the edge embeds
    pos: dict[str, int]  # path -> row of big/small
    tr_idx: list[int]  # carve indices into samples
    cv_idx: list[int]
    carved: list[int]  # rows: every training-side photo of the carve (views are cached for these)
    keep: torch.Tensor  # mask over carved: photos of trained (not held-out) products
    tr: list[int]  # rows of big/small: training photos of trained products
    cv: list[int]  # rows: carved photos of trained products
    held: list[int]  # products held out of training (open-set)
    y: torch.Tensor  # class index of each training row


def _prepare(samples: list[Sample], cfg: FinetuneConfig, rng: np.random.Generator, cache_dir: Path) -> _Data:
    tr_idx, cv_idx = carve(samples, cfg, rng, cache_dir)  # type: ignore[arg-type]
    # Held-out products are drawn after the carve from their own generator, so an open-set run carves
    # exactly as the closed-set run of the same seed and can reuse its cached views.
    all_labels = sorted({s.label for s in samples})
    held_rng = np.random.default_rng([cfg.seed, cfg.holdout_classes])
    held = sorted(held_rng.choice(all_labels, cfg.holdout_classes, replace=False).tolist()) if cfg.holdout_classes \
        else []
    big = decode_samples(samples, round(cfg.input_size * cfg.cache_scale), cache_dir)
    small = decode_samples(samples, cfg.input_size, cache_dir)
    pos = {str(s.path): i for i, s in enumerate(big.samples)}

    carved = [pos[str(samples[i].path)] for i in tr_idx if str(samples[i].path) in pos]
    tr = [r for r in carved if big.labels[r] not in held]
    cv = [pos[str(samples[i].path)] for i in cv_idx if str(samples[i].path) in pos and samples[i].label not in held]
    label_map = {c: i for i, c in enumerate(sorted(set(big.labels[tr].tolist())))}
    y = torch.tensor([label_map[int(c)] for c in big.labels[tr]])
    keep = torch.tensor([big.labels[r] not in held for r in carved], dtype=torch.bool)
    return _Data(big, small, pos, tr_idx, cv_idx, carved, keep, tr, cv, held, y)


def _train_epoch(net: LiteNet, head: CosineHead, opt: torch.optim.Optimizer, views: torch.Tensor, y: torch.Tensor,
                 cfg: FinetuneConfig, epoch: int, g: torch.Generator) -> dict[str, Any]:
    """One pass over the training photos, each as one of its cached views, mirrored at random."""
    _set_train(net, cfg.freeze_blocks)
    n = len(y)
    steps = max(1, n // cfg.batch_size)
    total, warm = cfg.epochs * steps, round(cfg.warmup_epochs * steps)
    perm, pick = torch.randperm(n, generator=g), torch.randint(cfg.views, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    losses, correct, t0 = [], 0, time.time()
    for b in tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr):
        f = lr_factor(epoch * steps + b, total, warm)
        for grp in opt.param_groups:
            grp["lr"] = cfg.lr * grp["scale"] * f
        idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        x = views[pick[idx], idx].float()
        x = torch.where(flip[idx].view(-1, 1, 1, 1), x.flip(3), x)
        logits = head(net.forward_from(x, cfg.freeze_blocks), y[idx])
        loss = F.cross_entropy(logits, y[idx], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        correct += int((logits.argmax(1) == y[idx]).sum())
    return {"epoch": epoch + 1, "loss": float(np.mean(losses)), "train_acc": correct / (steps * cfg.batch_size),
            "epoch_s": time.time() - t0}


def finetune(samples: list[Sample], class_names: dict[int, str], out: Path, cfg: FinetuneConfig,
             val_split: list[Sample] | None = None, resume: bool = True) -> dict[str, Any]:
    """Train, select on the carve, write ``encoder.pt``, ``report.json`` and ``curves.png`` to ``out``."""
    cfg.check()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng, g = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = out / "cache"
    weights, wpath = locate_weights(cfg.backbone)
    arch = EncoderArch(kind=cfg.backbone, embedding_dim=cfg.embedding_dim)
    model = ProductEncoder(arch)
    net: LiteNet = model.net  # type: ignore[assignment]
    net.load_pretrained(wpath)
    _freeze(net, cfg.freeze_blocks)
    d = _prepare(samples, cfg, rng, cache_dir)
    k = cfg.freeze_blocks
    log.info("backbone=%s sha256=%s train=%d photos/%d products carve=%d photos frozen_blocks=%d views=%d",
             cfg.backbone, weights.sha256[:12], len(d.tr), int(d.y.max()) + 1 if len(d.y) else 0, len(d.cv), k,
             cfg.views)
    t0 = time.time()
    views_file = cache_dir / f"views-{cfg.seed}.pt"
    views = _cached(views_file, lambda: cache_views(net, d.big.pixels[d.carved], cfg, g))
    if len(views[0]) != len(d.carved):
        raise InputError(f"{views_file} holds {len(views[0])} photos, the carve {len(d.carved)}",
                         hint="delete the stale cache file (it belongs to another carve) and run again")
    views = views[:, d.keep]
    clean = _cached(cache_dir / "clean.pt", lambda: clean_features(net, d.small.pixels, cfg))
    log.info("cached frozen features views=%s clean=%s in %.0f s", tuple(views.shape), tuple(clean.shape),
             time.time() - t0)

    head = CosineHead(cfg.embedding_dim, int(d.y.max()) + 1 if len(d.y) else 1, cfg.scale, cfg.margin)
    opt = _optimizer(net, head, cfg)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"r1": -1.0}
    start, ckpt = 0, out / "checkpoint.pt"
    if resume and ckpt.is_file():
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"]); head.load_state_dict(st["head"]); opt.load_state_dict(st["opt"])
        history, best, start = st["history"], st["best"], st["epoch"] + 1
        g.set_state(st["rng"])
        log.info("resumed from %s at epoch %d", ckpt, start + 1)
    for epoch in range(start, cfg.epochs):
        row = _train_epoch(net, head, opt, views, d.y, cfg, epoch, g)
        if d.cv:
            gal_e, q_e = embed_cached(net, clean[d.tr], k), embed_cached(net, clean[d.cv], k)
            row["carved_val"] = retrieval_metrics(q_e, d.small.labels[d.cv], gal_e, d.small.labels[d.tr])
            if row["carved_val"]["macro_r1"] > best["r1"]:
                best = {"r1": row["carved_val"]["macro_r1"], "epoch": epoch + 1,
                        "state": copy.deepcopy(model.state_dict())}
        history.append(row)
        log.info("epoch=%d loss=%.4f train_acc=%.3f carved_r1=%s epoch_s=%.0f", row["epoch"], row["loss"],
                 row["train_acc"], row.get("carved_val", {}).get("macro_r1", "-"), row["epoch_s"])
        st = {"model": model.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(), "history": history,
              "best": best, "epoch": epoch, "rng": g.get_state()}
        torch.save(st, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)
    if "state" in best:
        model.load_state_dict(best["state"])
    model.eval()
    report = _report(cfg, arch, weights.to_dict(), d, history, best)
    report.update(_open_set_and_val(model, _spec(cfg), d, samples, val_split, class_names, cache_dir))
    _write_run(out, model, cfg, class_names, report)
    return report


def _report(cfg: FinetuneConfig, arch: EncoderArch, pretrained: dict[str, Any], d: _Data,
            history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
    return {
        "config": asdict(cfg), "arch": arch.to_dict(), "preprocess": _spec(cfg).to_dict(), "pretrained": pretrained,
        "selected_epoch": best.get("epoch", cfg.epochs), "selected_by": "sessions-carve macro R@1",
        "n_train_images": len(d.tr), "n_train_classes": int(d.y.max()) + 1 if len(d.y) else 0,
        "heldout_classes": d.held, "skipped": d.big.skipped, "history": history,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(), "threads": cfg.threads},
    }


def _write_run(out: Path, model: ProductEncoder, cfg: FinetuneConfig, class_names: dict[int, str],
               report: dict[str, Any]) -> None:
    """``encoder.pt`` in the layout export/onnx.py loads (weights under 'ema'), the report and curves."""
    torch.save({"ema": model.state_dict(), "arch": model.arch.to_dict(), "preprocess": _spec(cfg).to_dict(),
                "classes": {int(k): v for k, v in class_names.items()},
                "report": {k: v for k, v in report.items() if k != "history"}}, out / "encoder.pt")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_curves(report["history"], out / "curves.png")


def _cached(path: Path, make: Any) -> torch.Tensor:
    """A tensor cached on disk, so a resumed run does not recompute the frozen features."""
    if path.is_file():
        t: torch.Tensor = torch.load(path, weights_only=True)
        return t
    t = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(t, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return t


def _open_set_and_val(model: ProductEncoder, spec: PreprocessSpec, d: _Data, samples: list[Sample],
                      val_split: list[Sample] | None, names: dict[int, str], cache_dir: Path) -> dict[str, Any]:
    """Held-out products enrolled from their photos (carve queries), and the val split, reported once."""
    from export.evaluate import embed

    res: dict[str, Any] = {}
    if d.held:
        enrolled = [d.pos[str(samples[i].path)] for i in d.tr_idx if str(samples[i].path) in d.pos]
        qh = [d.pos[str(samples[i].path)] for i in d.cv_idx
              if str(samples[i].path) in d.pos and samples[i].label in d.held]
        if qh:
            e_g, e_q = embed(model, d.small.pixels[enrolled], spec), embed(model, d.small.pixels[qh], spec)
            res["carved_open_set"] = retrieval_metrics(e_q, d.small.labels[qh], e_g, d.small.labels[enrolled])
    if val_split:
        res["val"] = evaluate_split(model, spec, d.big, d.small, d.tr, val_split, d.held, names, cache_dir)
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="storelens export train --backbone NAME", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", help="Grocery Store split file (path, fine, coarse), e.g. .../train.txt")
    src.add_argument("--folder", help="folder layout <root>/<sku>/*.jpg")
    p.add_argument("--val", help="split file reported once at the end (never used for tuning)")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt (resumable), encoder.pt, report.json")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    d = FinetuneConfig()
    for name, value in asdict(d).items():
        flag = "--" + name.replace("_", "-")
        if name == "backbone":
            p.add_argument(flag, choices=sorted(BACKBONES), default=value, help="pretrained backbone (%(default)s)")
        elif name == "carve":
            p.add_argument(flag, choices=("sessions", "random", "none"), default=value, help="(%(default)s)")
        elif name == "device":
            p.add_argument(flag, choices=("cpu",), default=value, help="(%(default)s)")
        else:
            p.add_argument(flag, type=type(value), default=value, help="(%(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s")
    samples, names = load_samples(args)
    cfg = FinetuneConfig(**{k: getattr(args, k) for k in FinetuneConfig.__dataclass_fields__})

    val = read_split(Path(args.val)) if args.val else None
    report = finetune(samples, names, Path(args.out), cfg, val, resume=not args.no_resume)
    print(json.dumps(report.get("val", {}), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
