"""FGSM and PGD: never outside the eps-ball or [0, 1], and deterministic per image (their effect on a trained
model is tested in test_robustness.py, on the run it trains)."""

import pytest
import torch
from torch import nn

from supcon.evaluate.attacks import fgsm, pgd
from supcon.models import Classifier, build_encoder

EPSILONS = [1 / 255, 2 / 255, 4 / 255, 8 / 255]


def _model(outputs: int = 3, channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return Classifier(build_encoder("smallcnn", channels, 12), outputs).eval()


def _images(n: int = 6, channels: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.rand(n, channels, 12, 12)
    x[0] = 0.0  # pixels at the edges of [0, 1], where the clamp and the ball meet
    x[1] = 1.0
    return x


@pytest.mark.parametrize("outputs", [3, 1])  # softmax head, binary head
def test_attacks_stay_in_the_eps_ball_and_the_pixel_range(outputs):
    model, x = _model(outputs), _images()
    y = torch.tensor([0, 1, 1, 0, 1, 0]) if outputs == 1 else torch.tensor([0, 1, 2, 0, 1, 2])
    for eps in EPSILONS:
        for x_adv in (fgsm(model, x, y, eps), pgd(model, x, y, eps, steps=4),
                      pgd(model, x, y, eps, steps=3, step_size=10 * eps)):  # steps far larger than the ball
            assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
            assert (x_adv - x).abs().max() <= eps + 1e-6
            assert x_adv.min() >= 0 and x_adv.max() <= 1
            assert (x_adv - x).abs().max() > eps / 2  # the attack moved the images, not merely copied them


def test_pgd_is_deterministic_per_image_and_leaves_the_model_as_it_was():
    model, x = _model(), _images()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    whole = pgd(model, x, y, 4 / 255, steps=2, seeds=[10, 11, 12, 13, 14, 15])
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    halves = torch.cat([pgd(model, x[:3], y[:3], 4 / 255, steps=2, seeds=[10, 11, 12]),
                        pgd(model, x[3:], y[3:], 4 / 255, steps=2, seeds=[13, 14, 15])])
    assert torch.allclose(whole, halves, atol=1e-6)  # an image's attack does not depend on its batch
    assert not torch.equal(whole, pgd(model, x, y, 4 / 255, steps=2, seeds=[0, 1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="one seed per image"):
        pgd(model, x, y, 4 / 255, seeds=[1, 2])
