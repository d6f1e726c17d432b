"""Batched training augmentation (one affine warp and a few tensor ops per batch, CPU or GPU).

Random-resized crop, flip and a small rotation in one affine warp; brightness, contrast and
saturation jitter with no hue shift (colour is what tells a green apple from a yellow one);
random erasing for occlusion by hands and shelf edges. The random draws come from a CPU
generator, so a run is reproducible whatever device trains it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edge.models.preprocess import PreprocessSpec


@dataclass(frozen=True)
class AugmentConfig:
    crop_min_area: float = 0.30  # smallest random crop, as a fraction of the image area
    rotate_deg: float = 15.0
    jitter: float = 0.3  # brightness and contrast in [1 - j, 1 + j], saturation in [1 - j, 1 + j] * 0.8
    erase_p: float = 0.25


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.empty(n).uniform_(lo, hi, generator=g)


def augment(pix: torch.Tensor, out: int, spec: PreprocessSpec, g: torch.Generator, aug: AugmentConfig) -> torch.Tensor:
    """uint8 (N, S, S, 3) RGB on any device -> normalised float (N, 3, out, out), random per sample."""
    n, dev = pix.shape[0], pix.device
    x = pix.permute(0, 3, 1, 2).float().div_(255.0)
    area = _uniform(n, aug.crop_min_area, 1.0, g)
    logr = _uniform(n, math.log(3 / 4), math.log(4 / 3), g)
    sx = (area.sqrt() * logr.exp().sqrt()).clamp(max=1.0)
    sy = (area.sqrt() / logr.exp().sqrt()).clamp(max=1.0)
    tx = (torch.rand(n, generator=g) * 2 - 1) * (1 - sx)
    ty = (torch.rand(n, generator=g) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    ang = (torch.rand(n, generator=g) * 2 - 1) * math.radians(aug.rotate_deg)
    c, s = ang.cos(), ang.sin()
    theta = torch.stack([torch.stack([sx * c * flip, -sy * s, tx], 1), torch.stack([sx * s * flip, sy * c, ty], 1)], 1)
    grid = F.affine_grid(theta.to(dev), [n, 3, out, out], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    j = aug.jitter
    bright = _uniform(n, 1 - j, 1 + j, g).view(n, 1, 1, 1).to(dev)
    contrast = _uniform(n, 1 - j, 1 + j, g).view(n, 1, 1, 1).to(dev)
    sat = _uniform(n, 1 - 0.8 * j, 1 + 0.8 * j, g).view(n, 1, 1, 1).to(dev)
    x = x * bright
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = ((x - grey) * sat + grey).clamp_(0, 1)
    m = torch.tensor(spec.mean, device=dev).view(1, 3, 1, 1)
    sd = torch.tensor(spec.std, device=dev).view(1, 3, 1, 1)
    x = (x - m) / sd
    for i in torch.nonzero(torch.rand(n, generator=g) < aug.erase_p).flatten().tolist():
        eh, ew = (torch.randint(out // 5, out // 2, (2,), generator=g)).tolist()
        y0 = int(torch.randint(0, out - eh, (1,), generator=g).item())
        x0 = int(torch.randint(0, out - ew, (1,), generator=g).item())
        x[i, :, y0 : y0 + eh, x0 : x0 + ew] = (torch.randn(3, eh, ew, generator=g) * 0.5).to(dev)
    return x.contiguous(memory_format=torch.channels_last)
