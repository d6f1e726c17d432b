"""The product image encoders: compact from-scratch CNNs, or a pretrained backbone (export/backbones.py).

Two shapes, both sized for a 2-core store box (int8 inference in a couple of milliseconds
a crop), both ending in an L2-normalised embedding so nearest-neighbour search (cosine)
finds products, including products enrolled after training:

* ``plain`` (the default): a VGG-style stack of 3x3 conv-BN-ReLU with max-pooling between
  stages and global average pooling, ~1.2 M parameters, ~0.27 GMAC at 144 px. Measured on
  the Grocery Store photos (112 px, 30 epochs, the same simple augmentation, sessions carve):
  carve R@1 0.82 and val macro R@1 0.49, against 0.72 and 0.34 for the ResNet below, whose
  two strided stem convolutions throw away the fine texture that tells apple cultivars apart.
* ``resnet``: the first model (two strided stem convs, basic residual blocks, GeM pooling,
  BatchNorm neck, projection); kept so older checkpoints still load and export.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.backbones import BACKBONES, GeM, LiteNet

# Lite's "same" padding is fixed at construction; it is identical for every input size that is a
# multiple of 32 (all stride-2 convs then see even sizes), which export/finetune.py requires.
LITE_PADDING_SIZE = 224


@dataclass(frozen=True)
class EncoderArch:
    """Shape of the encoder; stored in checkpoints and in the bundle's provenance."""

    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (1, 2, 2, 2)  # plain: 3x3 convs a stage; resnet: residual blocks a stage
    stem: int = 32
    embedding_dim: int = 256
    kind: str = "plain"  # plain | resnet | a pretrained backbone of export/backbones.py

    def to_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> EncoderArch:
        return cls(
            widths=tuple(d["widths"]),  # type: ignore[arg-type]
            blocks=tuple(d["blocks"]),  # type: ignore[arg-type]
            stem=int(d["stem"]),  # type: ignore[call-overload]
            embedding_dim=int(d["embedding_dim"]),  # type: ignore[call-overload]
            kind=str(d.get("kind", "resnet")),  # checkpoints from before `kind` existed are resnets
        )


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.short(x))


class ProductEncoder(nn.Module):
    """Image (N, 3, S, S), normalised pixels -> (N, D) unit-length embeddings."""

    def __init__(self, arch: EncoderArch = EncoderArch()) -> None:
        super().__init__()
        self.arch = arch
        self.net: nn.Module
        if arch.kind == "plain":
            self.net = PlainNet(arch)
        elif arch.kind == "resnet":
            self.net = ResNet(arch)
        elif arch.kind in BACKBONES:
            self.net = LiteNet(arch.kind, arch.embedding_dim, LITE_PADDING_SIZE)
        else:
            raise ValueError(f"unknown encoder kind {arch.kind!r}: use plain, resnet or {', '.join(BACKBONES)}")
        self._register_load_state_dict_pre_hook(_nest_legacy_keys)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised embedding (the classifier head of training reads this)."""
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(x), dim=1)


def _nest_legacy_keys(state_dict: dict[str, torch.Tensor], prefix: str, *_: object) -> None:
    """Checkpoints from before ``kind`` keep the resnet's weights at the top level, not under ``net.``.

    ``load_state_dict`` hands hooks its own copy of the mapping, so the caller's is untouched.
    """
    for k in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "net.")]:
        state_dict[prefix + "net." + k[len(prefix) :]] = state_dict.pop(k)


class PlainNet(nn.Module):
    """Strided 3x3 stem, then stages of 3x3 conv-BN-ReLU separated by 2x2 max-pooling, then GAP."""

    def __init__(self, arch: EncoderArch) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, arch.stem, 2)]
        cin = arch.stem
        for i, (cout, n) in enumerate(zip(arch.widths, arch.blocks, strict=True)):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(n):
                layers.append(conv_bn(cin, cout))
                cin = cout
        self.body = nn.Sequential(*layers)
        self.proj: nn.Module = nn.Identity() if cin == arch.embedding_dim else nn.Linear(cin, arch.embedding_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x).mean(dim=(2, 3)))


class ResNet(nn.Module):
    """The first encoder: strided stem, residual blocks, GeM, BatchNorm neck, projection."""

    def __init__(self, arch: EncoderArch) -> None:
        super().__init__()
        w = arch.widths
        self.stem = nn.Sequential(conv_bn(3, arch.stem, 2), conv_bn(arch.stem, w[0], 2))
        layers: list[nn.Module] = []
        cin = w[0]
        for i, (cout, n) in enumerate(zip(w, arch.blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.body = nn.Sequential(*layers)
        self.pool = GeM()
        self.neck = nn.BatchNorm1d(cin)
        self.proj = nn.Linear(cin, arch.embedding_dim, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.body.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.conv2[1].weight)  # type: ignore[arg-type]  # zero-init residual: each block starts as identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.neck(self.pool(self.body(self.stem(x)))))


@torch.no_grad()
def embed_batches(model: nn.Module, batches: Iterable[np.ndarray], *, dim: int = 0) -> np.ndarray:
    """Unit embeddings of preprocessed float32 (n, 3, S, S) batches, in eval mode on the model's device.

    Callers pass a generator so a whole catalog is never held as float32 at once.
    """
    model.eval()
    dev = next(model.parameters()).device
    out = [model(torch.from_numpy(x).to(dev).contiguous(memory_format=torch.channels_last)).cpu().numpy()
           for x in batches]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)


class CosineHead(nn.Module):
    """Normalised-softmax (CosFace) classifier: logits = s * (cos(theta) - m on the true class)."""

    def __init__(self, dim: int, n_classes: int, scale: float = 30.0, margin: float = 0.2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(emb, dim=1) @ F.normalize(self.weight, dim=1).t()
        return self.scale * (cos - self.margin * F.one_hot(labels, cos.shape[1]).to(cos.dtype))
