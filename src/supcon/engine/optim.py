"""Optimizers and learning-rate schedules, each from a small registry keyed by the name ``--optimizer`` and
``--schedule`` take (a new one is an entry here and a choice in the Config)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


def _sgd(params, lr: float, weight_decay: float, momentum: float, nesterov: bool) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay)


def _adam(params, lr: float, weight_decay: float, momentum: float, nesterov: bool) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _adamw(params, lr: float, weight_decay: float, momentum: float, nesterov: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _rmsprop(params, lr: float, weight_decay: float, momentum: float, nesterov: bool) -> torch.optim.Optimizer:
    # momentum is left at RMSprop's 0: the study's Keras RMSprop had none
    return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": _sgd, "adam": _adam, "adamw": _adamw, "rmsprop": _rmsprop}


def build_optimizer(name: str, params: Iterable, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.9, nesterov: bool = False) -> torch.optim.Optimizer:
    """SGD (with ``momentum``, optionally Nesterov), Adam, AdamW or RMSprop on the parameters that need gradients.

    ``params`` are parameters, or parameter groups (dicts with ``params`` and their own ``lr``, as in torch)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
    else:
        params = [p for p in params if p.requires_grad]
    return OPTIMIZERS[name](params, lr, weight_decay, momentum, nesterov)


def _fixed(progress: float, step: int, step_epochs: int, step_gamma: float, steps_per_epoch: int) -> float:
    return 1.0


def _cosine(progress: float, step: int, step_epochs: int, step_gamma: float, steps_per_epoch: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _step(progress: float, step: int, step_epochs: int, step_gamma: float, steps_per_epoch: int) -> float:
    return step_gamma ** (step // max(1, step_epochs * steps_per_epoch))


# A schedule is the factor on the learning rate after warm-up: f(progress in [0, 1] of the steps after warm-up,
# the global step, step_epochs, step_gamma, steps_per_epoch).
SCHEDULES: dict[str, Callable[..., float]] = {"fixed": _fixed, "cosine": _cosine, "step": _step}


def build_schedule(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, steps_per_epoch: int,
                   warmup_epochs: float = 0.0, step_epochs: int = 30, step_gamma: float = 0.1
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR: linear warm-up, then fixed, cosine (to zero at the last step) or step decay."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    warmup = int(round(warmup_epochs * steps_per_epoch))
    decay = SCHEDULES[schedule]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return decay(progress, step, step_epochs, step_gamma, steps_per_epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
