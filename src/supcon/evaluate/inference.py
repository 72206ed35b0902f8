"""The one batched inference loop (a model's outputs for a set of images), and what a classifier's logits say.

Every feature, logit and probability the library computes outside a training step comes from :func:`outputs`:
the kNN monitor, the linear probe's features, t-SNE pictures, robustness under corruptions, ``predict``.

>>> from supcon.evaluate.inference import outputs, accuracy
>>> features = outputs(encoder, images_uint8, transform=inputs.plain())     # float32 [N, D], on the CPU
>>> accuracy(outputs(classifier, images_uint8, transform=inputs.plain()), labels)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from supcon.augment import apply_batch, is_batched
from supcon.device import as_model_input, autocast


@torch.no_grad()
def outputs(model: nn.Module, images: Tensor, *, transform=None, device: torch.device | str | None = None,
            batch_size: int = 512, dtype: torch.dtype | None = None,
            perturb: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """``model``'s outputs for ``images``, in eval mode and batches of ``batch_size``, on the CPU in float32.

    ``transform`` turns a uint8 batch into the model's input (a view transform of :mod:`supcon.augment`, batched
    or per image); without one, uint8 images are scaled to [0, 1] and anything else is fed as it is (features).
    ``perturb(x, indices)`` then changes each float batch (``indices``: its rows in ``images``), as corruptions
    do. ``device`` defaults to the model's; ``dtype`` runs the model under autocast.
    """
    device = torch.device(device) if device is not None else _device_of(model)
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            if transform is None:
                x = x.to(device)
                x = x.float() / 255 if x.dtype == torch.uint8 else x
            elif is_batched(transform):
                x = apply_batch(transform, x.to(device))  # uint8 travels: a quarter of the bytes
            else:
                x = apply_batch(transform, x).to(device)
            if perturb is not None:
                x = perturb(x, torch.arange(start, start + len(x)))
            with autocast(device, dtype):
                results.append(model(as_model_input(x, device)).float().cpu())
    finally:
        model.train(was_training)
    if not results:
        return torch.empty(0)
    return torch.cat(results)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def predicted_class(logits: Tensor) -> Tensor:
    """Class indices from logits: argmax, or ``logit > 0`` for a binary head's single column."""
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


def correct(logits: Tensor, labels: Tensor) -> Tensor:
    """Per image, whether :func:`predicted_class` gets its label right (bool ``[N]``, on the CPU)."""
    return predicted_class(logits).cpu() == labels.cpu().long()


def hits_text(hits: Tensor) -> str:
    """Per-image hits (bool ``[N]``) as the "0"/"1" text that a run's ``test_correct`` keeps."""
    return "".join("1" if h else "0" for h in hits.tolist())


def hits_array(text: str) -> np.ndarray:
    """:func:`hits_text`'s text back as a bool array."""
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """The fraction of ``labels`` that :func:`predicted_class` gets right."""
    return correct(logits, labels).float().mean().item()
