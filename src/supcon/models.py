"""Encoders, the projection head and the linear classifier.

An encoder maps images to a representation (L2-normalised by default, as in the paper); the projection head
maps it to the unit vectors the contrastive loss sees; stage 2 and the CE baseline put a linear layer on top.

>>> from supcon.models import build_encoder, SupConModel
>>> encoder = build_encoder("resnet18", in_channels=3, image_size=64)
>>> model = SupConModel(encoder)              # images -> unit vectors of size 128
>>> build_encoder("timm:mobilenetv3_small_050", image_size=64)   # any timm model, with the timm extra
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from supcon.options import ENCODERS, TIMM, check_encoder_name

RESNETS = tuple(name for name in ENCODERS if name.startswith("resnet"))


def resolve_encoder(name: str, image_size: int) -> str:
    """``auto`` picks a small CNN for tiny images (a ResNet would pool them away) and ResNet-18 otherwise."""
    if name == "auto":
        return "smallcnn" if image_size < 32 else "resnet18"
    check_encoder_name(name)
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
                  normalize: bool = True, pretrained: str | Path | None = None) -> Encoder:
    """Build an encoder from scratch (no weights are downloaded), or from a local file of weights.

    ``name``: ``smallcnn``, ``resnet18/34/50/101/152``, ``auto``, or ``timm:NAME`` (any timm model, built with
    ``num_classes=0`` so that it returns its pooled features; needs the ``timm`` extra); ``stem`` (torchvision
    ResNets only): ``imagenet`` (7x7 stride-2 convolution and max-pool), ``cifar`` (3x3 stride-1, no pool) or
    ``auto``. ``pretrained``: a ``.safetensors`` file loaded with :func:`load_pretrained`.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be positive; got {in_channels}")
    name = resolve_encoder(name, image_size)
    stem = resolve_stem(stem, image_size)
    encoder = _build(name, in_channels, image_size, stem, normalize)
    if pretrained is not None:
        load_pretrained(encoder, pretrained)
    return encoder


def _build(name: str, in_channels: int, image_size: int, stem: str, normalize: bool) -> Encoder:
    if name.startswith(TIMM):
        backbone = timm_backbone(name[len(TIMM):], in_channels, image_size)
        # Models with a head convolution after the pooling (MobileNetV3, GhostNet) return head_hidden_size
        # features, not the trunk's num_features.
        out_dim = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        return Encoder(backbone, out_dim, name, normalize)
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


def timm_backbone(name: str, in_channels: int = 3, image_size: int = 224) -> nn.Module:
    """The timm model ``name`` without its classifier (``num_classes=0``: it returns its pooled features, of size
    ``head_hidden_size``, which is ``num_features`` but for models with a head convolution after the pooling),
    randomly initialised: nothing is downloaded."""
    try:
        import timm
    except ImportError:
        raise ImportError(f"--encoder timm:{name} needs the timm package: pip install 'supcon[timm]'") from None
    if not timm.is_model(name):
        near = timm.list_models(f"*{name}*")[:5]
        raise ValueError(f"timm has no model {name!r}" + (f"; similar: {', '.join(near)}" if near else "")
                         + " (timm.list_models() lists them)")
    options = {"pretrained": False, "num_classes": 0, "in_chans": in_channels}
    try:
        try:
            # Transformers size their position embeddings from img_size; convolutional models take any size and
            # refuse the argument.
            return timm.create_model(name, img_size=image_size, **options)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            return timm.create_model(name, **options)
    except Exception as err:  # timm raises assertions and more for a size or channel count a model cannot take
        lines = str(err).strip().splitlines()
        raise ValueError(f"timm could not build {name} for {in_channels}-channel {image_size}x{image_size} images: "
                         f"{type(err).__name__}: {lines[0] if lines else ''}") from None


# Prefixes that a file of encoder weights may carry: a run's encoder.safetensors ("backbone."), a whole
# SupConModel or Classifier ("encoder.backbone."), and DataParallel or DDP wrappers ("module.").
_PREFIXES = ("module.", "encoder.", "backbone.")


def load_pretrained(encoder: Encoder, path: str | Path) -> None:
    """Load the weights in a local ``.safetensors`` file into ``encoder``'s backbone.

    The file may hold the backbone alone (timm's or torchvision's own checkpoints), a run's
    ``encoder.safetensors``, or a whole model; its classifier's weights (timm's ``pretrained_cfg["classifier"]``,
    torchvision's ``fc``) are ignored, since the encoder has none. Any other missing, unexpected or misshapen key
    is a one-line ``ValueError``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"pretrained weights not found: {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"cannot read {path} as safetensors: {str(err).splitlines()[0] if str(err) else err}"
                         ) from None
    backbone = encoder.backbone
    target = backbone.state_dict()
    for prefix in _PREFIXES:  # the part under the prefix; a whole model's other parts (its heads) are left out
        if any(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in target):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or "fc"
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {k: v for k, v in state.items() if k in target or not k.startswith(tuple(h + "." for h in heads))}
    # BatchNorm fills in a missing step counter itself; files written without one are common
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    misshapen = [k for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (first: {unexpected[0]})")
        if misshapen:
            k = misshapen[0]
            parts.append(f"{len(misshapen)} key(s) of another shape (first: {k}, {tuple(state[k].shape)} in the "
                         f"file, {tuple(target[k].shape)} in the encoder)")
        raise ValueError(f"{path} does not fit encoder {encoder.name}: {'; '.join(parts)}")
    backbone.load_state_dict(state, strict=False)  # strict but for the step counters checked above


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
    """Encoder followed by the projection head: images to unit vectors of size ``head.out_dim``.

    With a ``classifier`` (the joint objective, ``--loss supcon+ce``) the forward pass returns the unit vectors
    and the classifier's logits on the encoder's features; ``stop_grad`` keeps the classifier's gradient out of
    the encoder (the SupCon paper's joint variant).
    """

    def __init__(self, encoder: Encoder, head: ProjectionHead | None = None, classifier: nn.Linear | None = None,
                 stop_grad: bool = False):
        super().__init__()
        self.encoder = encoder
        self.head = head if head is not None else ProjectionHead(encoder.out_dim)
        if classifier is not None:  # registered only when used: a plain model's state dict stays as it was
            self.classifier = classifier
        self.stop_grad = stop_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        z = self.head(h)
        if not hasattr(self, "classifier"):
            return z
        return z, self.classifier(h.detach() if self.stop_grad else h)


class Classifier(nn.Module):
    """An encoder and a linear layer: the one classifier of the library.

    The CE baseline trains both end to end; the linear probe (``frozen=True``) trains the layer alone, the encoder
    kept in eval mode (its BatchNorm statistics stay put) and run without gradients. ``outputs`` is the number of
    logits or a ready ``nn.Linear`` (a run's ``linear.safetensors``, loaded). Given ``mean`` and ``std`` (a run
    trained with ``--normalize``), the classifier standardises its input itself and so takes float pixels in
    [0, 1]: what corruptions and adversarial attacks perturb.
    """

    def __init__(self, encoder: Encoder, outputs: int | nn.Linear, *, frozen: bool = False,
                 mean: list[float] | None = None, std: list[float] | None = None):
        super().__init__()
        self.encoder = encoder.requires_grad_(False) if frozen else encoder
        self.fc = outputs if isinstance(outputs, nn.Linear) else nn.Linear(encoder.out_dim, outputs)
        self.frozen = frozen
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.standardized = mean is not None
        if self.standardized:  # buffers only when used: the trained classifiers' state dicts stay as they were
            self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardized:
            x = (x - self.mean) / self.std
        if self.frozen:
            with torch.no_grad():
                h = self.encoder(x)
            return self.fc(h)
        return self.fc(self.encoder(x))
