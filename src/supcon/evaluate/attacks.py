r"""L-infinity adversarial examples on plain autograd: FGSM and PGD.

Both work in the model's input space of images in ``[0, 1]`` (a run that normalises its inputs gets the
normalisation as part of the model, so that ``eps`` means pixel values): the adversarial image ``x'`` satisfies
``|x' - x| <= eps`` element-wise and ``0 <= x' <= 1``.

- **FGSM** (Goodfellow et al. 2015): one step ``x' = clip(x + eps * sign(grad_x loss))``.
- **PGD** (Madry et al. 2018): a random start uniform in the eps-ball, then ``steps`` steps of
  ``step_size * sign(grad)``, each projected back onto the eps-ball and ``[0, 1]``; ``step_size`` defaults to
  ``2.5 * eps / steps``, Madry et al.'s choice, which lets the walk cross the ball in ``steps`` steps.

The loss is the cross-entropy of :func:`~supcon.evaluate.calibration.class_logits` (for a binary head that is its
binary cross-entropy). The model is switched to eval mode, and its parameters stop requiring gradients while
an attack runs, so that only the input's gradient is computed; both are restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supcon.evaluate.calibration import class_logits

__all__ = ["ATTACKS", "EPSILONS", "PGD_STEPS", "fgsm", "pgd"]

ATTACKS = ("fgsm", "pgd")
EPSILONS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
PGD_STEPS = 10


def _check(x: Tensor, eps: float) -> None:
    if not eps >= 0:
        raise ValueError(f"expected eps >= 0, got {eps}")
    if not x.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got {x.dtype}")


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the attack; the model's own state afterwards."""
    was_training = model.training
    needed = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in needed:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in needed:
            p.requires_grad_(flag)
        model.train(was_training)


def _input_gradient(model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        # summed, not averaged: each image's gradient is then its own loss's, whatever the batch
        loss = F.cross_entropy(class_logits(model(x)).float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0, 1)


def fgsm(model: nn.Module, x: Tensor, labels: Tensor, eps: float) -> Tensor:
    """The fast gradient sign attack on images ``x`` (float ``[B, C, H, W]`` in [0, 1]) with their ``labels``."""
    _check(x, eps)
    labels = labels.long().to(x.device)
    with _frozen(model):
        grad = _input_gradient(model, x, labels)
    return _project(x + eps * grad.sign(), x, eps).detach()


def pgd(model: nn.Module, x: Tensor, labels: Tensor, eps: float, steps: int = PGD_STEPS,
        step_size: float | None = None, random_start: bool = True, seeds: Sequence[int] | None = None) -> Tensor:
    """Projected gradient descent (L-infinity) with ``steps`` steps of ``step_size`` (default 2.5 eps / steps)
    from a random start in the eps-ball; image ``i``'s start is drawn from a generator seeded ``seeds[i]``
    (default ``i``), so that an image's attack does not depend on the batch it is in."""
    _check(x, eps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"expected steps to be an integer >= 1, got {steps!r}")
    step_size = 2.5 * eps / steps if step_size is None else step_size
    labels = labels.long().to(x.device)
    x = x.detach()
    x_adv = x.clone()
    if random_start and eps > 0:
        seeds = range(len(x)) if seeds is None else seeds
        if len(seeds) != len(x):
            raise ValueError(f"expected one seed per image: {len(x)} images, {len(seeds)} seeds")
        noise = torch.stack([torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(int(s)))
                             for s in seeds]).to(x.device, x.dtype)
        x_adv = _project(x + (2 * noise - 1) * eps, x, eps)
    with _frozen(model):
        for _ in range(steps):
            grad = _input_gradient(model, x_adv, labels)
            x_adv = _project(x_adv + step_size * grad.sign(), x, eps)
    return x_adv.detach()
