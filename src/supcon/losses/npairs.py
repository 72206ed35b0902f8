r"""Multi-class N-pair loss (Sohn, 2016) as the Keras supervised-contrastive example uses it; memory-bounded.

Same input contract as :class:`~supcon.losses.SupConLoss`: features ``[B, V, D]`` are flattened view-major to
``z`` of shape ``[N = B*V, D]``, labels repeated ``V`` times. With ``s_ij = z_i . z_j / tau`` over all ``N``
columns, the anchor itself included, and ``n_i`` the number of rows labelled like ``i`` (``i`` included)::

    l_i = -sum_j t_ij log softmax_j(s_i),   t_ij = [y_j == y_i] / n_i
        = log sum_j exp(s_ij) - mean_{j : y_j = y_i} s_ij
    loss = mean_i l_i

This is the Keras example (keras.io/examples/vision/supervised-contrastive-learning, "SupervisedContrastive
Loss"): ``logits = normalize(z) @ normalize(z).T / temperature`` (0.05 there) fed to TensorFlow Addons'
``tfa.losses.npairs_loss``, which turns the labels into the label-equality matrix, divides each row by its sum
and takes ``softmax_cross_entropy_with_logits`` per row, then the mean. The diagonal is not masked, so every
sample is its own positive and sits in its own denominator, unlike SupCon, which excludes ``i`` from both.
wangz10/contrastive_loss's ``multiclass_npairs_loss`` is the same with ``tau = 1``.

Memory: the softmax denominators are computed in blocks of ``block_size`` anchor rows (``[block_size, N]`` at a
time) with the gradient accumulated in the same pass; the positive term needs no pairwise work,
``sum_{j : y_j = y_i} s_ij = z_i . C_{y_i} / tau`` with per-class sums ``C``. Peak extra memory is
``O(N * block_size + N * D)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from supcon.losses.maxmargin import _Blockwise, flatten_views
from supcon.losses.supcon import _auto_block_size

__all__ = ["NPairsLoss", "npairs_loss"]

_REDUCTIONS = ("mean", "none")


def _check_options(temperature, block_size, reduction) -> None:
    # `not x > 0` also rejects NaN.
    if not temperature > 0:
        raise ValueError(f"expected temperature > 0, got {temperature}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"expected reduction in {_REDUCTIONS}, got {reduction!r}")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"expected block_size to be None (automatic) or an integer >= 1, got {block_size!r}")


def _pass(z, lab, counts, tau, block_size, weights):
    r"""Per-anchor ``l_i`` and, given ``weights``, ``d(sum_i w_i l_i) / dz``.

    With ``P`` the row softmax of ``s`` (diagonal included), the log-sum-exp part's gradient is
    ``((w P) z + P^T (w z)) / tau``, one GEMM per side and block, with the weights scaling the ``[block, D]``
    operands rather than the ``[block, N]`` matrix; the positive part's is ``(w_i C_{y_i} + U_{y_i}) /
    (tau n_i)`` with ``U_c`` the weighted sum of class ``c``'s rows.
    """
    n, dim = z.shape
    num_classes = counts.shape[0]
    n_i = counts[lab].to(z.dtype)
    class_sums = z.new_zeros(num_classes, dim).index_add_(0, lab, z)
    out = (z * class_sums.index_select(0, lab)).sum(1).div_(n_i * -tau)  # minus the mean positive logit
    grad = None
    if weights is not None:
        coef = weights / (tau * n_i)
        weighted = z.new_zeros(num_classes, dim).index_add_(0, lab, z * weights[:, None])
        grad = -(class_sums.index_select(0, lab) * coef[:, None] + weighted.index_select(0, lab) / (tau * n_i[:, None]))
    z_scaled = z / tau  # folds 1/tau into the forward GEMM
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        s = z_scaled[start:stop] @ z.T
        m = s.amax(1, keepdim=True)
        e = s.sub_(m).exp_()
        d = e.sum(1)
        out[start:stop] += d.log() + m[:, 0]
        if weights is None:
            continue
        alpha = weights[start:stop, None] / (d[:, None] * tau)
        grad.addmm_(e.T, z[start:stop] * alpha)  # contrast side
        grad[start:stop].addcmul_(e @ z, alpha)  # anchor side
    return out, grad


def npairs_loss(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 0.1,
    block_size: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Functional form of :class:`NPairsLoss`; see there for the arguments and shapes."""
    _check_options(temperature, block_size, reduction)
    z, lab, batch, views = flatten_views(features, labels)
    n = z.shape[0]
    if block_size is None:
        block_size = _auto_block_size(n, n)
    counts = torch.bincount(lab)
    need_grad = torch.is_grad_enabled() and z.requires_grad
    if reduction == "mean":
        weights = z.new_full((n,), 1.0 / n)
        return _Blockwise.apply(z, _pass, (lab, counts, float(temperature), block_size), weights, need_grad)
    per_anchor = _Blockwise.apply(z, _pass, (lab, counts, float(temperature), block_size), None, need_grad)
    return per_anchor.view(views, batch).T


class NPairsLoss(nn.Module):
    r"""Multi-class N-pair loss as in the Keras supervised-contrastive example (``tfa.losses.npairs_loss``).

    Each row of ``s = z z^T / tau`` (``z = cat(unbind(features, 1))``, ``N = B * V`` rows, the diagonal kept) is
    a softmax whose target spreads evenly over the rows with the anchor's label, the anchor itself included::

        l_i = log sum_{j} exp(s_ij) - mean_{j : y_j = y_i} s_ij,   loss = mean_i l_i

    The difference from SupCon's L_out: the anchor counts as its own positive and stays in its own denominator,
    so ``l_i >= log n_i`` (``n_i`` rows share its label), reached when each class collapses to a point far from
    the others; and an anchor without another positive still has a loss (only the ``log n_i = 0`` floor).

    Args:
        temperature: ``tau``; must be > 0. 0.1 by default, as ``SupConLoss`` and ``--temperature`` (the Keras
            example uses 0.05; wangz10/contrastive_loss's wrapper 1).
        block_size: anchor rows processed at once; trades speed for memory, never changes the result.
        reduction: ``"mean"`` over anchors, or ``"none"``: per-anchor losses ``[B, V]``.

    Shapes: ``features`` ``[B, V, D]`` float, used as given (L2-normalise beforehand, as the Keras example
    does); ``labels`` ``[B]`` integers or ``None`` (each sample its own class). fp32 output for fp16/bf16.
    Invalid input raises the same one-line ``ValueError`` as :class:`SupConLoss`.

    Memory: ``O(N * block_size + N * D)``; no ``N x N`` matrix is built.

    Example:
        >>> import torch
        >>> from supcon.losses import NPairsLoss
        >>> features = torch.nn.functional.normalize(torch.randn(8, 2, 16), dim=-1)
        >>> NPairsLoss(temperature=0.1)(features, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.1, block_size: int | None = None, reduction: str = "mean") -> None:
        super().__init__()
        _check_options(temperature, block_size, reduction)
        self.temperature = temperature
        self.block_size = block_size
        self.reduction = reduction

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        return npairs_loss(features, labels, temperature=self.temperature, block_size=self.block_size,
                           reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, block_size={self.block_size}, reduction={self.reduction!r}"
