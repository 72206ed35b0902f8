"""Tests for supcon.models: encoders (SmallCNN and ResNets with both stems), the auto rules, the projection
head, SupConModel, Classifier, the errors and gradient flow. Small models and batches keep it fast on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from supcon.models import (
    ENCODERS,
    Classifier,
    Encoder,
    ProjectionHead,
    SmallCNN,
    SupConModel,
    build_encoder,
    resolve_encoder,
    resolve_stem,
)

B, SIZE = 2, 32


def images(channels: int, size: int = SIZE, n: int = B, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def side(name: str) -> int:
    """Input side for a forward pass. Encoders are built for 32 px (which decides the auto stem), but a
    ResNet is fully convolutional, and 16 px inputs make its CIFAR-stem passes four times cheaper on a CPU."""
    return 16 if name.startswith("resnet") else SIZE


def encode(encoder: Encoder, x: torch.Tensor) -> torch.Tensor:
    encoder.eval()
    with torch.no_grad():
        return encoder(x)


# ---------------------------------------------------------------- encoders


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("stem", ["imagenet", "cifar", "auto"])
@pytest.mark.parametrize("name, out_dim", [("smallcnn", 128), ("resnet18", 512)])
def test_build_encoder_output(name, out_dim, stem, channels):
    torch.manual_seed(0)
    enc = build_encoder(name, in_channels=channels, image_size=SIZE, stem=stem)
    assert isinstance(enc, Encoder) and enc.name == name and enc.out_dim == out_dim and enc.normalize
    h = encode(enc, images(channels, side(name)))
    assert h.shape == (B, out_dim) and h.dtype == torch.float32
    torch.testing.assert_close(h.norm(dim=1), torch.ones(B))


@pytest.mark.parametrize("name, channels", [("smallcnn", 1), ("smallcnn", 3), ("resnet18", 1)])
def test_build_encoder_without_normalize(name, channels):
    torch.manual_seed(0)
    enc = build_encoder(name, in_channels=channels, image_size=SIZE, normalize=False)
    assert not enc.normalize
    h = encode(enc, images(channels, side(name)))
    assert h.shape == (B, enc.out_dim)
    assert not torch.allclose(h.norm(dim=1), torch.ones(B), atol=1e-3)
    assert (h >= 0).all()  # the representation is a ReLU followed by average pooling
    # the normalised encoder with the same weights gives the same direction
    enc.normalize = True
    torch.testing.assert_close(encode(enc, images(channels, side(name))), h / h.norm(dim=1, keepdim=True))


def test_resnet50_out_dim():
    torch.manual_seed(0)
    enc = build_encoder("resnet50", in_channels=3, image_size=16, stem="imagenet")
    assert enc.out_dim == 2048 and enc.name == "resnet50"
    h = encode(enc, images(3, size=16))
    assert h.shape == (B, 2048)
    torch.testing.assert_close(h.norm(dim=1), torch.ones(B))


def test_encoder_handles_other_sizes():
    torch.manual_seed(0)
    small = build_encoder("smallcnn", in_channels=1, image_size=8)
    assert encode(small, images(1, size=8)).shape == (B, 128)
    full = build_encoder("resnet18", in_channels=1, image_size=SIZE)  # auto stem: cifar, at its full 32 px
    assert encode(full, images(1, size=SIZE)).shape == (B, 512)
    big = build_encoder("resnet18", in_channels=3, image_size=64)  # auto stem: imagenet
    assert encode(big, images(3, size=64)).shape == (B, 512)


# ---------------------------------------------------------------- auto rules and stems


@pytest.mark.parametrize("size, expected", [(8, "smallcnn"), (28, "smallcnn"), (31, "smallcnn"),
                                            (32, "resnet18"), (64, "resnet18"), (224, "resnet18")])
def test_resolve_encoder_auto(size, expected):
    assert resolve_encoder("auto", size) == expected


@pytest.mark.parametrize("name", ENCODERS)
def test_resolve_encoder_passes_names_through(name):
    assert resolve_encoder(name, 8) == name and resolve_encoder(name, 224) == name


@pytest.mark.parametrize("size, expected", [(8, "cifar"), (32, "cifar"), (33, "imagenet"), (64, "imagenet")])
def test_resolve_stem_auto(size, expected):
    assert resolve_stem("auto", size) == expected
    assert resolve_stem("cifar", size) == "cifar" and resolve_stem("imagenet", size) == "imagenet"


def test_build_encoder_auto_name():
    assert build_encoder("auto", in_channels=1, image_size=28).name == "smallcnn"
    assert isinstance(build_encoder("auto", in_channels=1, image_size=28).backbone, SmallCNN)
    assert build_encoder("auto", in_channels=3, image_size=32).name == "resnet18"


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("stem, size", [("cifar", 64), ("auto", 32)])
def test_cifar_stem(stem, size, channels):
    backbone = build_encoder("resnet18", in_channels=channels, image_size=size, stem=stem).backbone
    conv1 = backbone.conv1
    assert conv1.in_channels == channels and conv1.out_channels == 64
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert isinstance(backbone.maxpool, nn.Identity)
    assert not any(isinstance(m, nn.MaxPool2d) for m in backbone.modules())
    assert isinstance(backbone.fc, nn.Identity)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("stem, size", [("imagenet", 32), ("auto", 64)])
def test_imagenet_stem(stem, size, channels):
    backbone = build_encoder("resnet18", in_channels=channels, image_size=size, stem=stem).backbone
    conv1 = backbone.conv1
    assert conv1.in_channels == channels and conv1.out_channels == 64
    assert conv1.kernel_size == (7, 7) and conv1.stride == (2, 2)
    assert isinstance(backbone.maxpool, nn.MaxPool2d)
    assert isinstance(backbone.fc, nn.Identity)


def test_cifar_stem_keeps_resolution():
    # After the stem, the CIFAR variant keeps 32x32 while the ImageNet stem divides by four.
    x = images(3)
    for stem, side in (("cifar", 32), ("imagenet", 8)):
        bb = build_encoder("resnet18", image_size=SIZE, stem=stem).backbone.eval()
        with torch.no_grad():
            y = bb.maxpool(bb.relu(bb.bn1(bb.conv1(x))))
        assert y.shape[-2:] == (side, side), stem


# ---------------------------------------------------------------- projection head


@pytest.mark.parametrize("kind", ["mlp", "linear"])
@pytest.mark.parametrize("out_dim", [128, 16])
def test_projection_head_unit_vectors(kind, out_dim):
    torch.manual_seed(0)
    head = ProjectionHead(64, hidden_dim=32, out_dim=out_dim, kind=kind)
    assert head.out_dim == out_dim
    z = head(torch.randn(4, 64))
    assert z.shape == (4, out_dim)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))


def test_projection_head_mlp_hidden_width():
    head = ProjectionHead(64, hidden_dim=48, out_dim=20, kind="mlp")
    linears = [m for m in head.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 48), (48, 20)]
    assert any(isinstance(m, nn.ReLU) for m in head.net)
    default = ProjectionHead(512)
    assert [(m.in_features, m.out_features) for m in default.net if isinstance(m, nn.Linear)] == [
        (512, 2048), (2048, 128)]


def test_projection_head_linear_is_one_layer():
    head = ProjectionHead(64, hidden_dim=48, out_dim=20, kind="linear")
    assert isinstance(head.net, nn.Linear)
    assert (head.net.in_features, head.net.out_features) == (64, 20)


# ---------------------------------------------------------------- SupConModel and Classifier


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ["smallcnn", "resnet18"])
def test_supcon_model_unit_vectors(name, channels):
    torch.manual_seed(0)
    model = SupConModel(build_encoder(name, in_channels=channels, image_size=SIZE)).eval()
    assert model.head.out_dim == 128
    with torch.no_grad():
        z = model(images(channels, side(name)))
    assert z.shape == (B, 128)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(B))


def test_supcon_model_custom_head():
    torch.manual_seed(0)
    enc = build_encoder("smallcnn", in_channels=1, image_size=16)
    model = SupConModel(enc, ProjectionHead(enc.out_dim, hidden_dim=64, out_dim=32, kind="linear")).eval()
    with torch.no_grad():
        z = model(images(1, size=16, n=3))
    assert z.shape == (3, 32)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("name, k", [("smallcnn", 10), ("resnet18", 5)])
def test_classifier_logits(name, k):
    torch.manual_seed(0)
    enc = build_encoder(name, in_channels=3, image_size=SIZE)
    clf = Classifier(enc, k).eval()
    assert (clf.fc.in_features, clf.fc.out_features) == (enc.out_dim, k)
    with torch.no_grad():
        logits = clf(images(3, side(name), n=3))
    assert logits.shape == (3, k) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["smallcnn", "resnet18"])
def test_gradients_reach_encoder(name):
    torch.manual_seed(0)
    model = SupConModel(build_encoder(name, in_channels=3, image_size=SIZE)).train()
    z = model(images(3, side(name)))
    target = torch.randn(128)
    (z @ target).sum().backward()
    for pname, p in model.encoder.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    first_conv = next(m for m in model.encoder.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())


def test_gradients_reach_encoder_through_classifier():
    torch.manual_seed(0)
    clf = Classifier(build_encoder("smallcnn", in_channels=1, image_size=16), 4).train()
    loss = nn.functional.cross_entropy(clf(images(1, size=16, n=4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in clf.encoder.parameters())
    assert clf.encoder.backbone.features[0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", ["vgg16", "ResNet18", "resnet", ""])
def test_unknown_encoder(bad):
    valid = "auto, smallcnn, resnet18, resnet34, resnet50, resnet101, resnet152"
    with pytest.raises(ValueError, match=f"encoder must be one of {valid}"):
        resolve_encoder(bad, SIZE)
    with pytest.raises(ValueError, match="encoder must be one of auto, smallcnn"):
        build_encoder(bad, image_size=SIZE)


@pytest.mark.parametrize("bad", ["tiny", "Cifar", ""])
def test_unknown_stem(bad):
    with pytest.raises(ValueError, match="stem must be auto, imagenet or cifar"):
        resolve_stem(bad, SIZE)
    with pytest.raises(ValueError, match="stem must be auto, imagenet or cifar"):
        build_encoder("resnet18", image_size=SIZE, stem=bad)


def test_unknown_projection():
    with pytest.raises(ValueError, match="projection must be mlp or linear"):
        ProjectionHead(64, kind="nonlinear")


@pytest.mark.parametrize("channels", [0, -3])
def test_bad_in_channels(channels):
    with pytest.raises(ValueError, match="in_channels must be positive"):
        build_encoder("smallcnn", in_channels=channels)
