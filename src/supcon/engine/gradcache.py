"""The gradient cache: a contrastive step on a batch whose activations do not fit in memory (Gao et al., 2021)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from supcon.device import as_model_input, autocast
from supcon.engine.checkpoint import rng_state, set_rng_state


class GradCache:
    """A stage-1 step in chunks, for batches whose activations do not fit in memory.

    ``step`` embeds every view of the batch under ``torch.no_grad()``, ``chunk_size`` images at a time, so no
    activations are kept, and computes the loss on all the embeddings at once; ``backward`` takes the gradient
    of the loss with respect to the embeddings, then runs the model again on each chunk with gradients on and
    backpropagates that chunk's share (``z_chunk.backward(grad_chunk)``). The loss, and so its gradient, sees
    the whole batch; memory holds one chunk's activations. The price is a second forward pass.

    The parameter gradients equal the plain step's, with one exception: BatchNorm in training mode normalises
    each chunk with that chunk's own statistics (in both passes, so the two agree), which is the plain step on
    a model whose BatchNorm sees ``chunk_size`` images, as on a multi-GPU run without synchronised BatchNorm.
    With ``chunk_size`` at least the batch, or BatchNorm in eval mode, or no BatchNorm, they are the same. The
    running statistics are updated once per chunk by the second pass only (the first pass keeps them), so every
    image counts once. Random numbers drawn in the forward pass (dropout, say; none today) are replayed: the
    generator state before each chunk is kept and restored for its second pass.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, chunk_size: int, device: torch.device,
                 dtype: torch.dtype | None = None, forward: Callable | None = None, use_labels: bool = True):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive; got {chunk_size}")
        self.model, self.criterion, self.chunk_size = model, criterion, chunk_size
        self.device, self.dtype, self.use_labels = device, dtype, use_labels
        self.forward = forward or model
        self._pending: tuple | None = None

    def step(self, batch: list[torch.Tensor]) -> tuple[torch.Tensor, None]:
        """The loss of a ``[B, V, C, H, W]`` batch, embedded chunk by chunk without gradients."""
        x, y = batch
        b, v = x.shape[:2]
        chunks = as_model_input(x.flatten(0, 1), self.device).split(self.chunk_size)
        states, embeddings = [], []
        with torch.no_grad(), running_stats_kept(self.model):
            for chunk in chunks:
                states.append(rng_state())
                with autocast(self.device, self.dtype):
                    embeddings.append(self.forward(chunk))
        after = rng_state()
        z = torch.cat(embeddings)
        z = z.to(torch.promote_types(z.dtype, torch.float32)).requires_grad_()  # fp32 (or fp64) leaf
        self._pending = (chunks, states, after, z)
        return self.criterion(z.view(b, v, -1), y if self.use_labels else None), None

    def backward(self, loss: torch.Tensor) -> None:
        """The parameter gradients of the last :meth:`step`'s loss, by a second pass over its chunks."""
        chunks, states, after, z = self._pending
        self._pending = None
        loss.backward()
        for chunk, grad, state in zip(chunks, z.grad.split(self.chunk_size), states, strict=True):
            set_rng_state(state)
            with autocast(self.device, self.dtype):
                zc = self.forward(chunk)
            zc.backward(grad.to(zc.dtype))
        set_rng_state(after)


@contextlib.contextmanager
def running_stats_kept(model: nn.Module):
    """Normalisation layers' running statistics as they were before the block (the layers still normalise
    with the batch's own statistics in training mode)."""
    buffers = [buf for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
               for buf in (m.running_mean, m.running_var, m.num_batches_tracked) if buf is not None]
    saved = [buf.clone() for buf in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in zip(buffers, saved, strict=True):
                buf.copy_(value)
