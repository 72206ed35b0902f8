"""Encoders, the projection head and the linear classifier.

An encoder maps images to a representation (L2-normalised by default, as in the paper); the projection head
maps it to the unit vectors the contrastive loss sees; stage 2 and the CE baseline put a linear layer on top.

>>> from supcon.models import build_encoder, SupConModel
>>> encoder = build_encoder("resnet18", in_channels=3, image_size=64)
>>> model = SupConModel(encoder)              # images -> unit vectors of size 128
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
ENCODERS = ("smallcnn",) + RESNETS


def resolve_encoder(name: str, image_size: int) -> str:
    """``auto`` picks a small CNN for tiny images (a ResNet would pool them away) and ResNet-18 otherwise."""
    if name == "auto":
        return "smallcnn" if image_size < 32 else "resnet18"
    if name not in ENCODERS:
        raise ValueError(f"encoder must be one of auto, {', '.join(ENCODERS)}; got {name!r}")
    return name


def resolve_stem(stem: str, image_size: int) -> str:
    """``auto``: the CIFAR stem keeps resolution for images up to 32 px, the ImageNet stem above."""
    if stem == "auto":
        return "cifar" if image_size <= 32 else "imagenet"
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"stem must be auto, imagenet or cifar; got {stem!r}")
    return stem


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks and global average pooling: enough for 8-32 px images, fast on a CPU."""

    def __init__(self, in_channels: int = 3, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                       nn.ReLU(inplace=True)]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        self.features = nn.Sequential(
            *block(in_channels, width, False), *block(width, width * 2, True),
            *block(width * 2, width * 4, True), *block(width * 4, width * 4, False),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = width * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class Encoder(nn.Module):
    """A headless backbone; ``forward`` returns the representation, L2-normalised when ``normalize``."""

    def __init__(self, backbone: nn.Module, out_dim: int, name: str, normalize: bool = True):
        super().__init__()
        self.backbone = backbone
        self.out_dim = out_dim
        self.name = name
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x)
        return F.normalize(h, dim=1) if self.normalize else h


def build_encoder(name: str = "resnet18", in_channels: int = 3, image_size: int = 32, stem: str = "auto",
                  normalize: bool = True) -> Encoder:
    """Build an encoder from scratch (no weights are downloaded).

    ``name``: ``smallcnn``, ``resnet18/34/50/101/152`` or ``auto``; ``stem`` (ResNets only): ``imagenet``
    (7x7 stride-2 convolution and max-pool), ``cifar`` (3x3 stride-1, no pool) or ``auto``.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be positive; got {in_channels}")
    name = resolve_encoder(name, image_size)
    stem = resolve_stem(stem, image_size)
    if name == "smallcnn":
        backbone = SmallCNN(in_channels)
        return Encoder(backbone, backbone.out_dim, name, normalize)
    resnet = getattr(torchvision.models, name)(weights=None)
    out_dim = resnet.fc.in_features
    resnet.fc = nn.Identity()
    if stem == "cifar":
        resnet.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        resnet.maxpool = nn.Identity()
    elif in_channels != 3:
        resnet.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return Encoder(resnet, out_dim, name, normalize)


class ProjectionHead(nn.Module):
    """Maps the representation to unit vectors for the loss: an MLP with one hidden layer, or a linear map."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, kind: str = "mlp"):
        super().__init__()
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True),
                                     nn.Linear(hidden_dim, out_dim))
        elif kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        else:
            raise ValueError(f"projection must be mlp or linear; got {kind!r}")
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(h), dim=1)


class SupConModel(nn.Module):
    """Encoder followed by the projection head: images to unit vectors of size ``head.out_dim``."""

    def __init__(self, encoder: Encoder, head: ProjectionHead | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head if head is not None else ProjectionHead(encoder.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class Classifier(nn.Module):
    """Encoder and a linear layer: the CE baseline (trained end to end) and stage 2 (encoder frozen)."""

    def __init__(self, encoder: Encoder, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))
