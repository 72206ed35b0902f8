r"""Supervised contrastive loss (Khosla et al., 2020), exact and memory-bounded.

Features ``[B, V, D]`` (``V`` views of ``B`` samples) are flattened view-major,
``z = cat(unbind(features, 1))`` of shape ``[N = B*V, D]``, with the labels
repeated ``V`` times. With ``s_ij = z_i . z_j / tau``, the positives of anchor
``i`` are ``P(i) = {p != i : y_p = y_i}`` and the contrast set is every row but
``i``:

* ``variant="out"`` (paper eq. 2, the default)::

    l_i = -(tau / tau_b) * mean_{p in P(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )

* ``variant="in"`` (paper eq. 3)::

    l_i = -(tau / tau_b) * log( mean_{p in P(i)} exp(s_ip) / sum_{a != i} exp(s_ia) )

Memory: the ``N x N`` similarity matrix is never built. Anchors are processed
in blocks of ``block_size`` rows (``[block_size, N]`` logits at a time) and the
gradient of the log-sum-exp terms is accumulated in the same pass, so peak
extra memory is ``O(N * block_size + N * D)``. The L_out positive term needs no
pairwise work at all: ``sum_{p in P(i)} z_i . z_p = z_i . (C_{y_i} - z_i)`` with
per-class sums ``C``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["SupConLoss", "supcon_loss"]

_VARIANTS = ("out", "in")
_CONTRAST_MODES = ("all", "one")
_REDUCTIONS = ("mean", "none")
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_options(temperature, base_temperature, variant, contrast_mode, block_size, reduction) -> None:
    # `not x > 0` also rejects NaN.
    if not temperature > 0:
        raise ValueError(f"expected temperature > 0, got {temperature}")
    if base_temperature is not None and not base_temperature > 0:
        raise ValueError(f"expected base_temperature > 0 or None, got {base_temperature}")
    if variant not in _VARIANTS:
        raise ValueError(f"expected variant in {_VARIANTS}, got {variant!r}")
    if contrast_mode not in _CONTRAST_MODES:
        raise ValueError(f"expected contrast_mode in {_CONTRAST_MODES}, got {contrast_mode!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"expected reduction in {_REDUCTIONS}, got {reduction!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"expected block_size to be an integer >= 1, got {block_size!r}")


def _check_inputs(features, labels) -> Tensor | None:
    if not isinstance(features, Tensor) or features.dim() != 3:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"expected features shaped [batch, views, dim], got shape {shape}")
    if not features.is_floating_point():
        raise ValueError(f"expected floating-point features, got dtype {features.dtype}")
    batch, views, _ = features.shape
    if batch * views < 2:
        raise ValueError(
            f"expected at least 2 feature vectors (batch * views >= 2), got shape {tuple(features.shape)}"
        )
    if labels is None:
        return None
    labels = torch.as_tensor(labels, device=features.device)
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"expected labels shaped [{batch}] (one per sample), got shape {tuple(labels.shape)}"
        )
    if labels.dtype not in _INT_DTYPES:
        raise ValueError(f"expected integer labels, got dtype {labels.dtype}")
    return labels


def _blocked_lse(z, lab, num_anchors, tau, block_size, with_pos, weights):
    """Per-anchor ``LSE_i = log sum_{a != i} exp(s_ia)`` (minus ``log sum_{p in P(i)} exp(s_ip)``
    when ``with_pos``), and, when ``weights`` is given, the gradient of ``sum_i w_i r_i`` w.r.t. ``z``.
    """
    out = z.new_empty(num_anchors)
    grad = torch.zeros_like(z) if weights is not None else None
    if with_pos:
        has_pos = torch.bincount(lab)[lab[:num_anchors]] > 1
    for start in range(0, num_anchors, block_size):
        stop = min(start + block_size, num_anchors)
        rows = torch.arange(start, stop, device=z.device)
        zb = z[start:stop]
        logits = (zb @ z.T).div_(tau)
        logits[rows - start, rows] = -math.inf  # an anchor is never its own contrast
        # logsumexp subtracts the row max, so this is stable for any temperature.
        lse = torch.logsumexp(logits, dim=1)
        if with_pos:
            pos_logits = logits.masked_fill(lab[start:stop, None] != lab[None, :], -math.inf)
            # Rows without positives would give -inf - (-inf) = NaN below; 0 keeps them finite.
            plse = torch.where(has_pos[start:stop], torch.logsumexp(pos_logits, dim=1), 0.0)
            out[start:stop] = lse - plse
        else:
            out[start:stop] = lse
        if weights is None:
            continue
        # d r_i / d s_ij = softmax_ij over the contrast set (minus over positives for L_in).
        coef = logits.sub_(lse[:, None]).exp_()
        if with_pos:
            coef -= pos_logits.sub_(plse[:, None]).exp_()
        coef *= weights[start:stop, None] / tau
        grad[start:stop].addmm_(coef, z)  # anchor side of s_ij
        grad.addmm_(coef.T, zb)  # contrast side of s_ij
    return out, grad


class _BlockedLSE(torch.autograd.Function):
    """Blocked log-sum-exp terms of the loss with a hand-written gradient.

    With ``weights`` the output is the scalar ``sum_i w_i r_i`` and its gradient is accumulated during
    the forward pass, so backward is a single scale. Without ``weights`` the output is the per-anchor
    vector ``r`` and backward redoes the blocked pass weighted by the incoming gradient.
    """

    @staticmethod
    def forward(ctx, z, lab, weights, num_anchors, tau, block_size, with_pos, need_grad):
        ctx.args = (num_anchors, tau, block_size, with_pos)
        ctx.scalar = weights is not None
        r, grad = _blocked_lse(z, lab, num_anchors, tau, block_size, with_pos, weights if need_grad else None)
        if not ctx.scalar:
            ctx.save_for_backward(z, lab)
            return r
        ctx.save_for_backward(grad)
        return (weights * r).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if ctx.scalar:
            (grad,) = ctx.saved_tensors
            grad_z = grad * grad_out
        else:
            z, lab = ctx.saved_tensors
            _, grad_z = _blocked_lse(z, lab, *ctx.args, weights=grad_out.to(z.dtype))
        return grad_z, None, None, None, None, None, None, None


def supcon_loss(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 0.1,
    base_temperature: float | None = None,
    variant: str = "out",
    contrast_mode: str = "all",
    block_size: int = 1024,
    reduction: str = "mean",
) -> Tensor:
    """Functional form of :class:`SupConLoss`; see there for the arguments and the returned shapes."""
    _check_options(temperature, base_temperature, variant, contrast_mode, block_size, reduction)
    labels = _check_inputs(features, labels)
    batch, views, _ = features.shape
    # fp16/bf16 lose too much in N-wide sums and in the per-class sums; compute (and return) in fp32.
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    z = torch.cat(torch.unbind(features, dim=1))
    if labels is None:
        ids = torch.arange(batch, device=z.device)
    else:
        # Dense ids 0..C-1 make bincount/index_add_ work for negative, sparse or huge labels.
        ids = torch.unique(labels, return_inverse=True)[1]
    lab = ids.repeat(views)
    num_anchors = batch if contrast_mode == "one" else batch * views
    anchor_lab = lab[:num_anchors]
    counts = torch.bincount(lab)
    num_pos = (counts[anchor_lab] - 1).to(z.dtype)
    valid = num_pos > 0
    scale = temperature / (base_temperature or temperature)

    # Everything but the log-sum-exp terms: mean_p s_ip for L_out, -log|P(i)| for L_in.
    if variant == "out":
        class_sums = z.new_zeros(counts.shape[0], z.shape[1]).index_add_(0, lab, z)
        za = z[:num_anchors]
        pos_sim = (za * (class_sums[anchor_lab] - za)).sum(1) / temperature
        pos_term = pos_sim / num_pos.clamp(min=1)
    else:
        pos_term = -num_pos.clamp(min=1).log()

    need_grad = torch.is_grad_enabled() and z.requires_grad
    args = (num_anchors, temperature, block_size, variant == "in", need_grad)
    if reduction == "mean":
        # Anchors without positives get weight 0; if there are none at all the result is an exact,
        # graph-connected zero with a zero gradient.
        # Divide by the count as a tensor of z's dtype: a Python float over an int tensor gives fp32.
        weights = valid.to(z.dtype) * scale / valid.sum().clamp(min=1).to(z.dtype)
        return _BlockedLSE.apply(z, lab, weights, *args) - (weights * pos_term).sum()
    per_anchor = _BlockedLSE.apply(z, lab, None, *args)
    per_anchor = torch.where(valid, scale * (per_anchor - pos_term), 0.0)
    return per_anchor.view(num_anchors // batch, batch).T


class SupConLoss(nn.Module):
    r"""Supervised contrastive loss (SupCon, Khosla et al., 2020); SimCLR's NT-Xent when ``labels`` is None.

    Args:
        temperature: ``tau`` in ``s_ij = z_i . z_j / tau``; must be > 0.
        base_temperature: ``tau_b``; the loss is scaled by ``tau / tau_b``. ``None`` means ``tau_b = tau``
            (no rescaling). HobbitLong/SupContrast uses ``tau_b = 0.07``.
        variant: ``"out"`` (L_out, the paper's recommended form) or ``"in"`` (L_in).
        contrast_mode: ``"all"``: every view is an anchor; ``"one"``: only view 0 is. The contrast set
            is always all ``N = B * V`` vectors except the anchor itself.
        block_size: anchor rows processed at once; trades speed for memory, never changes the result.
        reduction: ``"mean"`` over anchors that have at least one positive (0 if none has), or
            ``"none"``.

    Shapes:
        * ``features``: ``[B, V, D]`` float, used as given: L2-normalise beforehand, as the paper does.
        * ``labels``: ``[B]`` integers (any values) or ``None`` (each sample its own class, so only the
          other views of the same sample are positives).
        * output: a scalar for ``"mean"``; ``[B, V_anchor]`` per-anchor losses for ``"none"``
          (``V_anchor = V`` or 1), 0 where an anchor has no positive. fp32 for fp16/bf16 input.

    Formulas, with ``P(i) = {p != i : y_p = y_i}``::

        L_out: l_i = -(tau/tau_b) * mean_{p in P(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )
        L_in:  l_i = -(tau/tau_b) * log( mean_{p in P(i)} exp(s_ip) / sum_{a != i} exp(s_ia) )

    Memory: peak extra memory is ``O(N * block_size)``; no ``N x N`` matrix or mask is built, and the
    gradient is accumulated block by block during the forward pass. With ``reduction="none"`` the
    backward pass recomputes the blocks once more.

    Example:
        >>> import torch
        >>> from supcon.losses import SupConLoss
        >>> criterion = SupConLoss(temperature=0.1)
        >>> features = torch.nn.functional.normalize(torch.randn(8, 2, 16), dim=-1)
        >>> labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
        >>> criterion(features, labels).shape
        torch.Size([])
    """

    def __init__(
        self,
        temperature: float = 0.1,
        base_temperature: float | None = None,
        variant: str = "out",
        contrast_mode: str = "all",
        block_size: int = 1024,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_options(temperature, base_temperature, variant, contrast_mode, block_size, reduction)
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.variant = variant
        self.contrast_mode = contrast_mode
        self.block_size = block_size
        self.reduction = reduction

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        return supcon_loss(
            features,
            labels,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            variant=self.variant,
            contrast_mode=self.contrast_mode,
            block_size=self.block_size,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
            f"variant={self.variant!r}, contrast_mode={self.contrast_mode!r}, "
            f"block_size={self.block_size}, reduction={self.reduction!r}"
        )
