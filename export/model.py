"""The compact product image encoder (plain torch, no pretrained weights exist here).

A small ResNet-style CNN (~1.2 M parameters, ~0.1 GMAC at 128 px) sized for a 2-core
store box: int8 inference is a couple of milliseconds per crop. Its output is an
L2-normalised embedding, so nearest-neighbour search (cosine) finds products, including
products enrolled after training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EncoderArch:
    """Shape of the encoder; stored in checkpoints and in the bundle's provenance."""

    widths: tuple[int, ...] = (32, 64, 128, 192)
    blocks: tuple[int, ...] = (1, 2, 2, 1)
    stem: int = 24
    embedding_dim: int = 128

    def to_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> EncoderArch:
        return cls(
            widths=tuple(d["widths"]),  # type: ignore[arg-type]
            blocks=tuple(d["blocks"]),  # type: ignore[arg-type]
            stem=int(d["stem"]),  # type: ignore[call-overload]
            embedding_dim=int(d["embedding_dim"]),  # type: ignore[call-overload]
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


class GeM(nn.Module):
    """Generalised-mean pooling: between average and max, better for retrieval than GAP."""

    def __init__(self, p: float = 3.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class ProductEncoder(nn.Module):
    """Image (N, 3, S, S), normalised pixels -> (N, D) unit-length embeddings."""

    def __init__(self, arch: EncoderArch = EncoderArch()) -> None:
        super().__init__()
        self.arch = arch
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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised embedding (the classifier head of training reads this)."""
        return self.proj(self.neck(self.pool(self.body(self.stem(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(x), dim=1)


class CosineHead(nn.Module):
    """Normalised-softmax (CosFace) classifier: logits = s * (cos(theta) - m on the true class)."""

    def __init__(self, dim: int, n_classes: int, scale: float = 30.0, margin: float = 0.2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(emb, dim=1) @ F.normalize(self.weight, dim=1).t()
        return self.scale * (cos - self.margin * F.one_hot(labels, cos.shape[1]).to(cos.dtype))
