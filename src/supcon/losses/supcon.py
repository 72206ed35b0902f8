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

Speed: the only ``N x N`` work is the softmax denominator. Per block: one GEMM
for the logits (1/tau folded into the anchor rows), the row max, one shifted
exponential pass in place, a row sum, and two GEMMs for the gradient
(``E @ z`` for the anchors, ``E^T @ z_block`` for the contrast side) whose
per-row weights scale the ``[block, D]`` operands, never the ``[block, N]``
matrix. L_in sorts the columns by label so that a block's positives lie in one
column window; only that window is masked.

Dense path: where the ``[A, N]`` logits of all ``A`` anchors fit a budget
(``_DENSE_MAX_BYTES``, 1 GiB: N <= 16,384 with every view an anchor), the same
pass runs as one block with no window and no per-block Python work: one GEMM,
the row max, one exponential pass, a row sum (L_in: one masked pass over the
positives, with their own maximum) and the two gradient GEMMs. ``path="auto"``
takes it off the CPU, where per-block launches and slicing, not arithmetic,
dominated (a 4k-view batch took 3.1 ms on an H200 against a 0.5 ms floor); on
the CPU the cache-sized blocks stay faster. ``path="dense"`` or ``"blocked"``
forces one.

Host synchronisation: none, on either path, for L_out and for L_in on the dense
path. Labels are made dense with a sort and a cumulative sum, counted with a
scatter, and class-sized tensors have one row per sample, so no count is read
back (``torch.unique`` and ``bincount`` would wait for the device). Off the CPU,
L_in's positive sums are always taken with their own maximum (one more masked
pass), where the CPU checks each block for underflow and redoes only the rare
block that needs it; blocked L_in reads its column windows back once per call.
``anchors=`` is validated on the host, once per call.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["SupConLoss", "supcon_loss"]

_VARIANTS = ("out", "in")
_PATHS = ("auto", "dense", "blocked")
_CONTRAST_MODES = ("all", "one")
_REDUCTIONS = ("mean", "none")
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_options(temperature, base_temperature, variant, contrast_mode, block_size, reduction,
                   path="auto") -> None:
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
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"expected block_size to be None (automatic) or an integer >= 1, got {block_size!r}")
    if path not in _PATHS:
        raise ValueError(f"expected path in {_PATHS}, got {path!r}")


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


def _check_anchors(anchors, batch: int, device) -> Tensor | None:
    """``anchors`` as a long tensor on ``device``, or None when it names every sample in order (the fast path)."""
    if anchors is None:
        return None
    anchors = torch.as_tensor(anchors, device=device)
    if anchors.dtype not in _INT_DTYPES or anchors.dim() != 1 or len(anchors) == 0:
        raise ValueError(f"expected anchors to be a non-empty 1-D integer tensor of sample indices, got "
                         f"{anchors.dtype} of shape {tuple(anchors.shape)}")
    anchors = anchors.long()
    if bool(((anchors < 0) | (anchors >= batch)).any()) or len(anchors.unique()) != len(anchors):
        raise ValueError(f"expected anchors to be distinct sample indices in [0, {batch}), got {anchors.tolist()}")
    if len(anchors) == batch and torch.equal(anchors, torch.arange(batch, device=device)):
        return None
    return anchors


# Automatic block size (measured on 2 EPYC cores, D = 128): a [block, N] buffer of about 4M elements (16 MiB in
# fp32) stays in the last-level cache, but at least 512 rows, because below that streaming z and the [N, D]
# gradient once per block starts to cost (N = 65k: 24.1 s at 128 rows, 21.8 s at 512), and at most 32M elements
# (128 MiB) so that memory stays bounded for any N.
_AUTO_BLOCK_ELEMS = 1 << 22
_AUTO_BLOCK_MIN_ROWS = 512
_AUTO_BLOCK_MAX_ELEMS = 1 << 25


def _pow2_floor(x: int) -> int:
    return 1 << max(0, x.bit_length() - 1)


# Off the CPU there is no cache to stay in, and each block costs a dozen kernel launches and a pass over the [N, D]
# gradient: blocks of up to 512 MiB of logits (N = 65,536: 2,048 rows; N = 262,144: 512 rows).
_DEVICE_BLOCK_ELEMS = 1 << 27
# The dense path: all anchors in one block while their [A, N] fp32 logits take at most 1 GiB (N = 16,384 views).
_DENSE_MAX_BYTES = 1 << 30


def _auto_block_size(num_anchors: int, n: int, device: torch.device | None = None) -> int:
    """Default ``block_size`` for ``num_anchors`` anchors against ``n`` contrast vectors on ``device`` (None: the
    CPU)."""
    if device is not None and device.type != "cpu":
        return min(max(_pow2_floor(_DEVICE_BLOCK_ELEMS // n), 1), num_anchors)
    rows = max(_pow2_floor(_AUTO_BLOCK_ELEMS // n), _AUTO_BLOCK_MIN_ROWS)
    return min(rows, _pow2_floor(_AUTO_BLOCK_MAX_ELEMS // n), num_anchors)


def _use_dense(path: str, block_size: int | None, num_anchors: int, n: int, device: torch.device) -> bool:
    """Whether a call takes the dense path: forced, or automatically off the CPU when no smaller block was asked
    for and the ``[num_anchors, n]`` logits fit :data:`_DENSE_MAX_BYTES`."""
    if path != "auto":
        return path == "dense"
    return (device.type != "cpu" and (block_size is None or block_size >= num_anchors)
            and num_anchors * n * 4 <= _DENSE_MAX_BYTES)


def _sync_free(device: torch.device) -> bool:
    """Whether the blocked pass must not read values back (off the CPU, where that waits for the device)."""
    return device.type != "cpu"


def _dense_ids(labels: Tensor) -> Tensor:
    """``labels`` as ids ``0..C-1`` (equal ids for equal labels, in the labels' order), without reading anything
    back: ``torch.unique`` would wait for the device to learn ``C``."""
    values, order = labels.sort()
    starts = torch.ones_like(values, dtype=torch.long)  # 1 where a new label value begins
    starts[1:] = values[1:] != values[:-1]
    return torch.empty_like(starts).scatter_(0, order, starts.cumsum(0) - 1)


_local = threading.local()
_SCRATCH_KEEP_BYTES = 64 << 20


def _scratch(slot: int, numel: int, like: Tensor) -> Tensor:
    """A flat uninitialised tensor of ``numel`` elements of ``like``'s dtype and device.

    On CPU, up to 64 MiB per slot are kept per thread and reused by the next call: a fresh allocation of that
    size is mapped page by page by the kernel on first touch (about 0.15 ms per MiB here), which made L_in at
    N = 1k a third slower (8.2 ms instead of 6.2 ms; its floor is 4.4 ms).
    """
    if (
        like.device.type != "cpu"
        or numel * like.element_size() > _SCRATCH_KEEP_BYTES
        or type(like) is not Tensor  # fake/meta tracing, tensor subclasses: nothing to keep
        or torch.is_inference_mode_enabled()  # an inference tensor could not be written to outside that mode
        or getattr(torch.compiler, "is_compiling", lambda: False)()
    ):
        return like.new_empty(numel)
    kept = getattr(_local, "scratch", None)
    if kept is None:
        kept = _local.scratch = {}
    buf = kept.pop(slot, None)  # one buffer per slot, whatever the dtype: at most 128 MiB kept in all
    if buf is None or buf.dtype != like.dtype or buf.numel() < numel:
        del buf
        buf = like.new_empty(numel)
    kept[slot] = buf
    return buf[:numel]


@dataclass
class _Plan:
    """Everything a blocked pass needs besides ``z``, built once per call by :func:`supcon_loss`."""

    num_anchors: int
    tau: float
    block_size: int
    dense: bool = False  # one block, no windows, nothing read back (see _dense_pass)
    # L_in: the columns are ``z[perm]`` (sorted by label), so that a block's positives lie in one column window.
    perm: Tensor | None = None
    apos: Tensor | None = None  # positions of the anchors among the columns; None: the first num_anchors
    col_lab: Tensor | None = None  # labels of the columns (as floats where that is exact)
    has_pos: Tensor | None = None  # per anchor (in processing order): has at least one positive
    windows: list | None = None  # per block: the column window [w0, w1) that holds its anchors' positives
    # L_out with reduction="mean": the positive term and its gradient in closed form, from per-class sums.
    lab: Tensor | None = None  # dense label of every row of z
    num_classes: int = 0
    pos_coef: Tensor | None = None  # per anchor: w_i / (tau |P(i)|)


def _positive_sums(s: Tensor, anchor_lab: Tensor, col_lab: Tensor, has_pos: Tensor, out: Tensor):
    """L_in's positive sums of a block of logits ``s`` ``[rows, width]`` (an anchor's own column already -inf),
    without reading anything back: ``(q, p, pm)`` with ``pm`` each row's largest positive logit (0 without a
    positive), ``q = exp(s - pm)`` on the positives (the columns with the anchor's label) and 0 elsewhere, written
    into ``out``, and ``p = q.sum(1)``. Shifted by the positives' own maximum, ``p >= 1`` wherever there is a
    positive: no underflow to check for."""
    minus_inf = torch.full((), -math.inf, dtype=s.dtype, device=s.device)
    q = torch.where(anchor_lab[:, None] == col_lab[None, :], s, minus_inf, out=out)
    pm = torch.where(has_pos, q.amax(1), 0.0)
    q.sub_(pm[:, None]).exp_()
    return q, q.sum(1), pm


def _blocked_pass(z, plan, weights):
    r"""One blocked pass over the ``[num_anchors, N]`` logits ``s = z_a z^T / tau``; ``z`` are the columns.

    Returns ``r`` with ``r_i = LSE_i = log sum_{a != i} exp(s_ia)`` (minus ``PLSE_i = log sum_{p in P(i)}
    exp(s_ip)`` for L_in) and, when ``weights`` is given, ``d(sum_i w_i r_i) / dz``.

    Per block the only ``[block, N]`` work besides the three GEMMs is one exponential pass and three cheap
    passes (row max, shift, row sum): with ``E_ij = exp(s_ij - m_i)`` (diagonal 0) and ``d_i = sum_j E_ij``,
    the gradient is ``(w_i / (tau d_i)) (E z)_i`` (anchor side) plus ``E^T (w / (tau d) * z_block)``
    (contrast side), so the weights scale ``[block, D]`` operands instead of the ``[block, N]`` matrix. For
    L_in the coefficients of the positives become ``E_ij - d_i Q_ij`` (``Q`` the softmax over the positives),
    an update of the positives' window only, and the same two GEMMs give the whole gradient. Off the CPU nothing
    is read back inside the loop (see :func:`_positive_sums`).
    """
    if plan.dense:
        return _dense_pass(z, plan, weights)
    n, dim = z.shape
    num_anchors, tau, block_size, apos, col_lab = plan.num_anchors, plan.tau, plan.block_size, plan.apos, plan.col_lab
    contiguous = apos is None
    sync_free = _sync_free(z.device)
    za = z[:num_anchors] if contiguous else z.index_select(0, apos)
    za_scaled = za / tau  # folds 1/tau into the forward GEMM
    rows_max = min(block_size, num_anchors)
    buf = _scratch(0, rows_max * n, z)
    out = z.new_empty(num_anchors)
    grad = torch.empty_like(z) if weights is not None else None
    grad_anchor = z.new_empty(num_anchors, dim) if weights is not None and not contiguous else None
    if col_lab is not None:
        anchor_lab = col_lab[:num_anchors] if contiguous else col_lab[apos]
        pbuf = _scratch(1, rows_max * max(w1 - w0 for w0, w1 in plan.windows), z)
        # Below this a positive sum may have lost its leading digits to underflow: redo it with its own max.
        tiny = torch.finfo(z.dtype).tiny / torch.finfo(z.dtype).eps
    for k, start in enumerate(range(0, num_anchors, block_size)):
        stop = min(start + block_size, num_anchors)
        rows = stop - start
        s = buf[: rows * n].view(rows, n)
        torch.mm(za_scaled[start:stop], z.T, out=s)
        if contiguous:
            s.diagonal(start).fill_(-math.inf)  # an anchor is never its own contrast
        else:
            s.scatter_(1, apos[start:stop, None], -math.inf)
        if col_lab is not None:
            w0, w1 = plan.windows[k]
            width = w1 - w0
            hp = plan.has_pos[start:stop]
            q = pbuf[: rows * width].view(rows, width)
            if sync_free:  # before the logits become exponentials in place
                q, p, pm = _positive_sums(s[:, w0:w1], anchor_lab[start:stop], col_lab[w0:w1], hp, q)
        # Exact row max of the contrast set: stable for any temperature and no row sum below 1.
        m = s.amax(1, keepdim=True)
        e = s.sub_(m).exp_()
        d = e.sum(1)
        r = d.log().add_(m[:, 0])
        if col_lab is not None:
            ew = e[:, w0:w1]
            if not sync_free:
                # q = E * (same label), written as a 0/1 float mask then multiplied (a bool mask is 5x slower).
                torch.eq(anchor_lab[start:stop, None], col_lab[None, w0:w1], out=q).mul_(ew)  # diagonal: 0 already
                p = q.sum(1)
                pm = m[:, 0]
                if bool(((p < tiny) & hp).any()):
                    # Rare (tiny tau, positives far below the row max): logits of the window with their own max.
                    mask = anchor_lab[start:stop, None] != col_lab[None, w0:w1]
                    torch.mm(za_scaled[start:stop], z[w0:w1].T, out=q)
                    q.masked_fill_(mask, -math.inf)
                    self_cols = torch.arange(start, stop, device=z.device) if contiguous else apos[start:stop]
                    inside = (self_cols >= w0) & (self_cols < w1)
                    q[torch.arange(rows, device=z.device)[inside], self_cols[inside] - w0] = -math.inf
                    pm = torch.where(hp, q.amax(1), 0.0)
                    q.sub_(pm[:, None]).exp_()
                    p = q.sum(1)
            # Anchors without positives: 0 here, excluded (weight 0 / masked) by the caller.
            r -= torch.where(hp, p.log() + pm, 0.0)
            if weights is not None:
                ew.addcmul_(q, torch.where(hp, d / p, 0.0)[:, None], value=-1)
        out[start:stop] = r
        if weights is None:
            continue
        alpha = weights[start:stop, None] / (d[:, None] * tau)
        if start == 0:
            torch.mm(e.T, za[start:stop] * alpha, out=grad)  # contrast side; the first block initialises grad
        else:
            grad.addmm_(e.T, za[start:stop] * alpha)
        if contiguous:
            grad[start:stop].addcmul_(torch.mm(e, z), alpha)  # anchor side
        else:
            torch.mul(torch.mm(e, z), alpha, out=grad_anchor[start:stop])
    if grad_anchor is not None:
        grad.index_add_(0, apos, grad_anchor)
    return out, grad


def _dense_pass(z, plan, weights):
    r""":func:`_blocked_pass` as one block of all anchors against all ``N`` columns, in a fixed sequence of
    kernels with nothing read back: the logits GEMM, the anchors' own columns set to -inf, the row max, one shifted
    exponential pass in place, the row sum; for L_in one masked pass over the positives (:func:`_positive_sums`)
    and the update of their coefficients; then the two gradient GEMMs. The columns are in ``z``'s own order
    (no window, so no sort by label)."""
    num_anchors, tau, apos = plan.num_anchors, plan.tau, plan.apos
    za = z[:num_anchors] if apos is None else z.index_select(0, apos)
    s = torch.mm(za / tau, z.T)
    if apos is None:
        s.diagonal().fill_(-math.inf)  # an anchor is never its own contrast
    else:
        s.scatter_(1, apos[:, None], -math.inf)
    if plan.col_lab is not None:
        anchor_lab = plan.col_lab[:num_anchors] if apos is None else plan.col_lab.index_select(0, apos)
        q, p, pm = _positive_sums(s, anchor_lab, plan.col_lab, plan.has_pos, torch.empty_like(s))
    m = s.amax(1, keepdim=True)
    e = s.sub_(m).exp_()
    d = e.sum(1)
    r = d.log().add_(m[:, 0])
    if plan.col_lab is not None:
        hp = plan.has_pos
        r -= torch.where(hp, p.log() + pm, 0.0)
        if weights is not None:
            e.addcmul_(q, torch.where(hp, d / p, 0.0)[:, None], value=-1)
        del q
    if weights is None:
        return r, None
    alpha = weights[:, None] / (d[:, None] * tau)
    grad = torch.mm(e.T, za * alpha)  # contrast side
    anchor_side = torch.mm(e, z).mul_(alpha)
    if apos is None:
        grad[:num_anchors] += anchor_side
    else:
        grad.index_add_(0, apos, anchor_side)
    return r, grad


def _positive_term(z, plan, grad):
    r"""L_out's ``sum_i c_i z_i . (C_{y_i} - z_i)`` over the anchors (``c = plan.pos_coef``, ``C`` the class sums);
    subtracts its gradient ``[i anchor] c_i (C_{y_i} - 2 z_i) + W_{y_i}`` (``W_y = sum_{anchors of y} c_i z_i``)
    from ``grad`` when given."""
    num_anchors, lab, coef, apos = plan.num_anchors, plan.lab, plan.pos_coef, plan.apos
    if apos is None:
        za, anchor_lab = z[:num_anchors], lab[:num_anchors]
    else:
        za, anchor_lab = z.index_select(0, apos), lab.index_select(0, apos)
    class_sums = z.new_zeros(plan.num_classes, z.shape[1]).index_add_(0, lab, z)
    cz = za * coef[:, None]
    weighted_sums = torch.zeros_like(class_sums).index_add_(0, anchor_lab, cz)
    value = (weighted_sums * class_sums).sum() - (cz * za).sum()
    if grad is not None:
        grad -= weighted_sums.index_select(0, lab)
        anchor_grad = class_sums.index_select(0, anchor_lab).mul_(coef[:, None]).sub_(cz, alpha=2)
        if apos is None:
            grad[:num_anchors] -= anchor_grad
        else:
            grad.index_add_(0, apos, anchor_grad, alpha=-1)
    return value


class _SupCon(torch.autograd.Function):
    """The loss terms that need pairwise work, with a hand-written gradient.

    With ``weights`` (reduction="mean") the output is the scalar ``sum_i w_i r_i`` (minus L_out's positive
    term) and its gradient is accumulated during the forward pass, so backward is a single scale. Without
    ``weights`` the output is the per-anchor vector ``r`` and backward redoes the blocked pass weighted by the
    incoming gradient.
    """

    @staticmethod
    def forward(ctx, z, weights, plan, need_grad):
        ctx.plan = plan
        ctx.scalar = weights is not None
        columns = z if plan.perm is None else z.index_select(0, plan.perm)
        if not ctx.scalar:
            ctx.save_for_backward(z)
            return _blocked_pass(columns, plan, None)[0]
        r, grad = _blocked_pass(columns, plan, weights if need_grad else None)
        if grad is not None and plan.perm is not None:
            grad = torch.empty_like(grad).index_copy_(0, plan.perm, grad)  # back to z's row order
        total = (weights * r).sum()
        if plan.pos_coef is not None:
            total = total - _positive_term(z, plan, grad)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        plan = ctx.plan
        if ctx.scalar:
            (grad,) = ctx.saved_tensors
            return grad * grad_out, None, None, None
        (z,) = ctx.saved_tensors
        columns = z if plan.perm is None else z.index_select(0, plan.perm)
        _, grad = _blocked_pass(columns, plan, grad_out.to(z.dtype))
        if plan.perm is not None:
            grad = torch.empty_like(grad).index_copy_(0, plan.perm, grad)
        return grad, None, None, None


def supcon_loss(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 0.1,
    base_temperature: float | None = None,
    variant: str = "out",
    contrast_mode: str = "all",
    block_size: int | None = None,
    reduction: str = "mean",
    anchors: Tensor | None = None,
    path: str = "auto",
) -> Tensor:
    """Functional form of :class:`SupConLoss`; see there for the arguments and the returned shapes."""
    _check_options(temperature, base_temperature, variant, contrast_mode, block_size, reduction, path)
    labels = _check_inputs(features, labels)
    batch, views, dim = features.shape
    anchors = _check_anchors(anchors, batch, features.device)
    # fp16/bf16 lose too much in N-wide sums and in the per-class sums; compute (and return) in fp32.
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    z = features.transpose(0, 1).reshape(batch * views, dim)  # view-major: cat(unbind(features, 1))
    n = z.shape[0]
    # Dense ids 0..C-1 make the per-class counts and sums work for negative, sparse or huge labels. C is not read
    # back: class-sized tensors get one row per sample (C <= batch), the unused ones empty.
    ids = torch.arange(batch, device=z.device) if labels is None else _dense_ids(labels)
    lab = ids.repeat(views)
    anchor_views = 1 if contrast_mode == "one" else views
    counts = torch.zeros(batch, dtype=torch.long, device=z.device).scatter_add_(0, lab, torch.ones_like(lab))
    # The mean is over the anchors of the whole batch that have a positive, also when `anchors` picks a subset:
    # then the result is that subset's share of the batch's loss, and the shares of a partition add up to it.
    num_valid = (counts[lab[: batch * anchor_views]] > 1).sum()
    rows = None  # anchor rows of z, view-major like z; None: the first num_anchors rows
    if anchors is not None:
        rows = (anchors[None, :] + batch * torch.arange(anchor_views, device=z.device)[:, None]).flatten()
    num_anchors = batch * anchor_views if rows is None else len(rows)
    dense = _use_dense(path, block_size, num_anchors, n, z.device)
    if dense:
        block_size = num_anchors
    elif block_size is None:
        block_size = _auto_block_size(num_anchors, n, z.device)
    anchor_lab = lab[:num_anchors] if rows is None else lab[rows]
    num_pos = (counts[anchor_lab] - 1).to(z.dtype)
    valid = num_pos > 0
    scale = temperature / (base_temperature or temperature)
    plan = _Plan(num_anchors, temperature, block_size, dense)
    # Anchors without positives get weight 0; if there are none at all the mean is an exact, graph-connected
    # zero with a zero gradient. Divide by the count as a tensor of z's dtype (a Python float over an int
    # tensor gives fp32).
    weights = valid.to(z.dtype) * scale / num_valid.clamp(min=1).to(z.dtype) if reduction == "mean" else None

    order = None  # per anchor in processing order, its index among the anchors (L_in sorts them by label)
    # Labels as floats (exact below 2**23 classes in fp32) compare straight into a float mask.
    exact = counts.shape[0] <= 1 / torch.finfo(z.dtype).eps
    if variant == "in" and dense:
        # One block over the columns in their own order: no sort, no windows.
        plan.apos, plan.has_pos = rows, valid
        plan.col_lab = lab.to(z.dtype) if exact else lab
        pos_term = -num_pos.clamp(min=1).log()
    elif variant == "in":
        # Columns sorted by label: the positives of a block of (sorted) anchors form one column window.
        plan.perm = perm = torch.argsort(lab, stable=True)
        col_lab = lab[perm]
        if rows is None and contrast_mode == "all":
            order = sorted_rows = perm  # every row is an anchor, and row i is anchor i
        else:
            anchor_of_row = torch.full((n,), -1, dtype=torch.long, device=z.device)
            anchor_of_row[slice(num_anchors) if rows is None else rows] = torch.arange(num_anchors, device=z.device)
            # The anchors' positions among the sorted columns, in order: the first num_anchors of a stable sort
            # that puts them before the other columns (nonzero() would read the count back).
            is_other = (anchor_of_row[perm] < 0).to(torch.uint8)
            plan.apos = torch.argsort(is_other, stable=True)[:num_anchors]
            sorted_rows = perm[plan.apos]
            order = anchor_of_row[sorted_rows]
        plan.has_pos = valid[order]
        ends = counts.cumsum(0)
        first = torch.arange(0, num_anchors, block_size, device=z.device)
        last = (first + block_size).clamp(max=num_anchors) - 1
        sorted_lab = lab[sorted_rows]
        # The one value read back per call: slicing the windows needs their bounds on the host.
        plan.windows = torch.stack([(ends - counts)[sorted_lab[first]], ends[sorted_lab[last]]], 1).tolist()
        plan.col_lab = col_lab.to(z.dtype) if exact else col_lab
        # -log|P(i)|: no gradient.
        pos_term = -num_pos.clamp(min=1).log()
    elif reduction == "mean":
        plan.lab, plan.num_classes, plan.apos = lab, counts.shape[0], rows
        plan.pos_coef = weights / (temperature * num_pos.clamp(min=1))
    else:
        plan.apos = rows
        class_sums = z.new_zeros(counts.shape[0], dim).index_add_(0, lab, z)
        za = z[:num_anchors] if rows is None else z.index_select(0, rows)
        # index_select, not [] indexing: its backward is an index_add_, not a slow accumulating index_put.
        pos_sim = (za * (class_sums.index_select(0, anchor_lab) - za)).sum(1) / temperature
        pos_term = pos_sim / num_pos.clamp(min=1)

    need_grad = torch.is_grad_enabled() and z.requires_grad
    if reduction == "mean":
        loss = _SupCon.apply(z, weights if order is None else weights[order], plan, need_grad)
        return loss if variant == "out" else loss - (weights * pos_term).sum()
    per_anchor = _SupCon.apply(z, None, plan, need_grad)
    if order is not None:
        per_anchor = per_anchor[torch.argsort(order)]
    per_anchor = torch.where(valid, scale * (per_anchor - pos_term), 0.0)
    return per_anchor.view(anchor_views, num_anchors // anchor_views).T


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
            ``None`` (the default) picks it from N: on the CPU one block up to N = 2,048, then a ``[block, N]``
            buffer of about 16 MiB (fp32) with at least 512 rows, and never more than 128 MiB; elsewhere (CUDA)
            the dense path where it fits, else blocks of up to 512 MiB.
        reduction: ``"mean"`` over anchors that have at least one positive (0 if none has), or
            ``"none"``.
        path: ``"auto"`` (the default): the dense path (all anchors in one block, a fixed sequence of kernels,
            nothing read back) off the CPU when ``block_size`` allows it and the ``[A, N]`` logits take at most
            1 GiB, the blocked path otherwise; ``"dense"`` or ``"blocked"`` forces one. The result is the same.

    Call arguments: ``features``, ``labels`` and, optionally, ``anchors``: indices into the batch (``[0, B)``,
    distinct) of the samples whose views are anchors (view 0 only with ``contrast_mode="one"``); the contrast
    set stays all ``N`` vectors. With ``"mean"`` the result is then those anchors' share of the whole batch's
    loss (their losses summed, divided by the number of anchors with a positive in the whole batch), so the
    shares of disjoint subsets covering the batch add up to the batch's loss, gradients included: a
    data-parallel process takes its own samples as anchors against the gathered batch
    (:mod:`supcon.engine.distributed`). With ``"none"`` the output has one row per given anchor, in their order.

    Shapes:
        * ``features``: ``[B, V, D]`` float, used as given: L2-normalise beforehand, as the paper does.
        * ``labels``: ``[B]`` integers (any values) or ``None`` (each sample its own class, so only the
          other views of the same sample are positives).
        * ``anchors``: ``[A]`` integers or ``None`` (every sample).
        * output: a scalar for ``"mean"``; ``[B, V_anchor]`` per-anchor losses for ``"none"``
          (``V_anchor = V`` or 1; ``[A, V_anchor]`` with ``anchors``), 0 where an anchor has no positive.
          fp32 for fp16/bf16 input.

    Formulas, with ``P(i) = {p != i : y_p = y_i}``::

        L_out: l_i = -(tau/tau_b) * mean_{p in P(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )
        L_in:  l_i = -(tau/tau_b) * log( mean_{p in P(i)} exp(s_ip) / sum_{a != i} exp(s_ia) )

    Memory and speed: peak extra memory is ``O(N * block_size + N * D)`` (the dense path: ``O(A * N)``, twice
    that for L_in); no ``N x N`` matrix or mask is built beyond one block, and the gradient is accumulated block
    by block during the forward pass. Per block the work is the forward
    GEMM, one exponential pass, two gradient GEMMs and three cheap passes (row max, shift, row sum), within
    about 1.1-1.3x of those three operations alone (``benchmarks/bench_loss.py``). With ``reduction="none"`` the
    backward pass recomputes the blocks once more. On CPU a scratch buffer of up to 64 MiB is kept per thread
    between calls. On CUDA nothing is read back to the host (no synchronisation) but, for blocked L_in, its column
    windows once per call, and ``anchors`` when given, validated once per call.

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
        block_size: int | None = None,
        reduction: str = "mean",
        path: str = "auto",
    ) -> None:
        super().__init__()
        _check_options(temperature, base_temperature, variant, contrast_mode, block_size, reduction, path)
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.variant = variant
        self.contrast_mode = contrast_mode
        self.block_size = block_size
        self.reduction = reduction
        self.path = path

    def forward(self, features: Tensor, labels: Tensor | None = None, anchors: Tensor | None = None) -> Tensor:
        return supcon_loss(
            features,
            labels,
            anchors=anchors,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            variant=self.variant,
            contrast_mode=self.contrast_mode,
            block_size=self.block_size,
            reduction=self.reduction,
            path=self.path,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
            f"variant={self.variant!r}, contrast_mode={self.contrast_mode!r}, "
            f"block_size={self.block_size}, reduction={self.reduction!r}, path={self.path!r}"
        )
