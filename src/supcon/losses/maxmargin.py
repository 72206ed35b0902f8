r"""Pairwise max-margin contrastive loss (Hadsell, Chopra and LeCun, 2006), exact and memory-bounded.

Same input contract as :class:`~supcon.losses.SupConLoss`: features ``[B, V, D]`` are flattened view-major to
``z`` of shape ``[N = B*V, D]`` and the labels repeated ``V`` times. Over every unordered pair ``i < j`` of
distinct rows, with ``y_ij = [label_i == label_j]`` and ``d_ij`` their distance::

    f_ij = y_ij * d_ij**2 + (1 - y_ij) * max(margin - d_ij, 0)**2
    loss = mean_{i < j} f_ij

This is what the study we reproduce trained stage 1 with: its notebooks call
``losses.max_margin_contrastive_loss(z, labels)`` from wangz10/contrastive_loss, which takes the upper triangle
of the batch's pairwise distance matrix and feeds it to TensorFlow Addons' ``tfa.losses.contrastive_loss``
(exactly ``f_ij`` above), then ``reduce_mean``. Its defaults, which the notebooks kept, are ``margin=1.0`` and
``metric='euclidean'`` (``d_ij = ||z_i - z_j||``, on the unit sphere ``sqrt(2 - 2 cos)``), so those are the
defaults here; ``distance="cosine"`` is the wrapper's other metric, ``d_ij = 1 - z_i . z_j`` (the cosine
distance of unit vectors). The notebooks embed one view per image; with ``V > 1`` the pairs include the
other views of the same image, which are positives.

Memory: the pairs are visited in blocks of ``block_size`` anchor rows (``[block_size, N]`` at a time) and the
gradient is accumulated in the same pass, so the ``N x N`` matrix is never built: peak extra memory is
``O(N * block_size + N * D)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from supcon.losses.supcon import _auto_block_size, _check_inputs

__all__ = ["MaxMarginContrastiveLoss", "max_margin_loss"]

_DISTANCES = ("euclidean", "cosine")
_REDUCTIONS = ("mean", "none")


def _check_options(margin, distance, block_size, reduction) -> None:
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not margin > 0:
        raise ValueError(f"expected margin > 0, got {margin!r}")
    if distance not in _DISTANCES:
        raise ValueError(f"expected distance in {_DISTANCES}, got {distance!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"expected reduction in {_REDUCTIONS}, got {reduction!r}")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"expected block_size to be None (automatic) or an integer >= 1, got {block_size!r}")


def flatten_views(features: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor, int, int]:
    """``z = cat(unbind(features, 1))`` (fp32 for half types) and dense label ids per row; ``labels`` checked.

    Without labels every sample is its own class, so only the other views of the same sample are positives.
    """
    labels = _check_inputs(features, labels)
    batch, views, dim = features.shape
    # fp16/bf16 lose too much in N-wide sums; compute (and return) in fp32, as SupConLoss does.
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    z = features.transpose(0, 1).reshape(batch * views, dim)
    ids = torch.arange(batch, device=z.device) if labels is None else torch.unique(labels, return_inverse=True)[1]
    return z, ids.repeat(views), batch, views


def _pass(z, lab, margin, distance, block_size, weights):
    r"""Per-anchor ``l_i = mean_{j != i} f_ij`` and, given ``weights``, ``d(sum_i w_i l_i) / dz``.

    Each unordered pair appears in two rows, so a row's gradient coefficients carry both anchors' weights,
    ``(w_i + w_j) / (N - 1)``; then the rows of one block give their own gradient completely (one GEMM per
    block, no transposed pass).
    """
    n = z.shape[0]
    out = z.new_empty(n)
    grad = torch.empty_like(z) if weights is not None else None
    # The gradient of a negative pair's hinge grows like 1/d as d -> 0: a coincident negative (a duplicate image
    # with another label) gets a large, finite push instead of a NaN.
    tiny = torch.finfo(z.dtype).eps
    sq = (z * z).sum(1) if distance == "euclidean" else None
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        za = z[start:stop]
        rows = torch.arange(stop - start, device=z.device)
        c = za @ z.T
        same = lab[start:stop, None] == lab[None, :]
        if distance == "euclidean":
            d2 = (sq[start:stop, None] + sq[None, :] - 2 * c).clamp_(min=0)
            d = d2.clamp(min=tiny).sqrt_()
        else:
            d = 1 - c
            d2 = d * d
        hinge = (margin - d).clamp_(min=0)
        f = torch.where(same, d2, hinge * hinge)
        f[rows, rows + start] = 0
        out[start:stop] = f.sum(1) / (n - 1)
        if weights is None:
            continue
        pair_w = (weights[start:stop, None] + weights[None, :]) / (n - 1)
        if distance == "euclidean":
            # df/d(d^2): 1 for positives, -(m - d)/d for negatives; d(d_ij^2)/dz_i = 2 (z_i - z_j).
            h = torch.where(same, 1.0, -hinge / d).mul_(pair_w)
            h[rows, rows + start] = 0
            grad[start:stop] = 2 * (za * h.sum(1, keepdim=True) - h @ z)
        else:
            # df/dc with c = z_i . z_j: -2 d for positives, 2 max(m - d, 0) for negatives.
            h = torch.where(same, -2 * d, 2 * hinge).mul_(pair_w)
            h[rows, rows + start] = 0
            torch.mm(h, z, out=grad[start:stop])
    return out, grad


class _Blockwise(torch.autograd.Function):
    """A loss computed by ``block_pass(z, *options, weights) -> (per_anchor, grad)``, one pass over row blocks
    (shared by the max-margin and npairs losses). With ``weights`` (reduction="mean") the output is the scalar
    ``sum_i w_i l_i`` and its gradient is accumulated in the forward pass; without, the per-anchor vector, and
    backward redoes the pass weighted by the incoming gradient."""

    @staticmethod
    def forward(ctx, z, block_pass, options, weights, need_grad):
        ctx.block_pass, ctx.options = block_pass, options
        if weights is None:
            ctx.save_for_backward(z)
            return block_pass(z, *options, None)[0]
        per_anchor, grad = block_pass(z, *options, weights if need_grad else None)
        ctx.save_for_backward(grad)
        return (weights * per_anchor).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (saved,) = ctx.saved_tensors
        if grad_out.dim() == 0:
            return saved * grad_out, None, None, None, None
        grad = ctx.block_pass(saved, *ctx.options, grad_out.to(saved.dtype))[1]
        return grad, None, None, None, None


def max_margin_loss(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    margin: float = 1.0,
    distance: str = "euclidean",
    block_size: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Functional form of :class:`MaxMarginContrastiveLoss`; see there for the arguments and shapes."""
    _check_options(margin, distance, block_size, reduction)
    z, lab, batch, views = flatten_views(features, labels)
    n = z.shape[0]
    if block_size is None:
        block_size = _auto_block_size(n, n)
    need_grad = torch.is_grad_enabled() and z.requires_grad
    if reduction == "mean":
        # The mean over anchors of l_i = mean_{j != i} f_ij is the mean over the N(N-1)/2 unordered pairs.
        weights = z.new_full((n,), 1.0 / n)
        return _Blockwise.apply(z, _pass, (lab, float(margin), distance, block_size), weights, need_grad)
    per_anchor = _Blockwise.apply(z, _pass, (lab, float(margin), distance, block_size), None, need_grad)
    return per_anchor.view(views, batch).T


class MaxMarginContrastiveLoss(nn.Module):
    r"""Pairwise max-margin contrastive loss (Hadsell et al., 2006), the loss the study's notebooks trained with.

    Over all unordered pairs of distinct rows of ``z = cat(unbind(features, 1))`` (``N = B * V`` rows), with
    ``y_ij = 1`` for the same label and ``d_ij`` the pair's distance::

        loss = mean_{i < j} [ y_ij d_ij^2 + (1 - y_ij) max(margin - d_ij, 0)^2 ]

    which is TensorFlow Addons' ``tfa.losses.contrastive_loss`` on the upper triangle of the batch's distance
    matrix, averaged, as wangz10/contrastive_loss's ``max_margin_contrastive_loss`` computes it.

    Args:
        margin: negatives closer than this are pushed apart; must be > 0. The study's 1.0 by default.
        distance: ``"euclidean"`` (the default, and the study's: ``d = ||z_i - z_j||``, ``sqrt(2 - 2 cos)`` on
            the unit sphere, so the default margin asks different classes to be at least 60 degrees apart) or
            ``"cosine"`` (``d = 1 - z_i . z_j``, the cosine distance of unit vectors: margin 1 asks for 90 degrees).
        block_size: anchor rows processed at once; trades speed for memory, never changes the result.
            ``None`` picks it from N as :class:`SupConLoss` does.
        reduction: ``"mean"`` over the pairs, or ``"none"``: per anchor ``l_i = mean_{j != i} f_ij`` shaped
            ``[B, V]``, whose mean is the ``"mean"`` loss.

    Shapes: ``features`` ``[B, V, D]`` float, used as given (L2-normalise beforehand; ``"cosine"`` assumes unit
    vectors); ``labels`` ``[B]`` integers or ``None`` (each sample its own class). fp32 output for fp16/bf16.
    Invalid input raises the same one-line ``ValueError`` as :class:`SupConLoss`.

    Memory: ``O(N * block_size + N * D)``; no ``N x N`` matrix is built and the gradient is accumulated block
    by block in the forward pass. The gradient of a negative pair at distance 0 would be infinite; the
    distance is floored at ``sqrt(eps)`` of the dtype there.

    Example:
        >>> import torch
        >>> from supcon.losses import MaxMarginContrastiveLoss
        >>> features = torch.nn.functional.normalize(torch.randn(8, 2, 16), dim=-1)
        >>> MaxMarginContrastiveLoss()(features, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])).shape
        torch.Size([])
    """

    def __init__(self, margin: float = 1.0, distance: str = "euclidean", block_size: int | None = None,
                 reduction: str = "mean") -> None:
        super().__init__()
        _check_options(margin, distance, block_size, reduction)
        self.margin = margin
        self.distance = distance
        self.block_size = block_size
        self.reduction = reduction

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        return max_margin_loss(features, labels, margin=self.margin, distance=self.distance,
                               block_size=self.block_size, reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, distance={self.distance!r}, block_size={self.block_size}, "
                f"reduction={self.reduction!r}")
