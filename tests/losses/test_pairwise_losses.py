"""Tests for the max-margin and N-pair losses: float64 references written from TensorFlow Addons' formulas (as the
study's notebooks and the Keras example call them), gradcheck, blocking and its memory bound, closed forms, and
the same input validation as SupConLoss."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import LargestTensor

from supcon.losses import MaxMarginContrastiveLoss, NPairsLoss, SupConLoss, max_margin_loss, npairs_loss

LABELS = torch.tensor([3, 1, 3, 0, 1, 3])
DISTANCES = ["euclidean", "cosine"]


def unit_features(batch, views, dim, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, views, dim, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def flat(features, labels):
    batch, views, _ = features.shape
    z = torch.cat(torch.unbind(features.double(), dim=1))
    y = (torch.arange(batch) if labels is None else labels).repeat(views)
    return z, y


def tfa_max_margin(features, labels, margin=1.0, distance="euclidean"):
    """wangz10's max_margin_contrastive_loss in float64: the upper triangle of the distance matrix through
    tfa.losses.contrastive_loss (y d^2 + (1 - y) max(margin - d, 0)^2), then the mean. Returns (mean, per-anchor
    means over the other rows, [B, V])."""
    z, y = flat(features, labels)
    n = len(y)
    i, j = torch.triu_indices(n, n, offset=1)
    d = (z[i] - z[j]).norm(dim=1) if distance == "euclidean" else 1 - (z[i] * z[j]).sum(1)
    same = (y[i] == y[j]).double()
    f = same * d**2 + (1 - same) * torch.clamp(margin - d, min=0) ** 2
    per_anchor = torch.stack([f[(i == a) | (j == a)].mean() for a in range(n)])
    return f.mean(), per_anchor.view(-1, features.shape[0]).T


def tfa_npairs(features, labels, temperature):
    """The Keras example in float64: logits = z z^T / tau, tfa.losses.npairs_loss (label-equality rows divided by
    their sums, softmax cross-entropy per row, mean). Returns (mean, per-anchor [B, V])."""
    z, y = flat(features, labels)
    logits = z @ z.T / temperature
    target = (y[:, None] == y[None, :]).double()
    target = target / target.sum(1, keepdim=True)
    per_anchor = -(target * torch.log_softmax(logits, dim=1)).sum(1)
    return per_anchor.mean(), per_anchor.view(-1, features.shape[0]).T


def loss_and_grad(fn, features):
    x = features.clone().requires_grad_(True)
    loss = fn(x)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("use_labels", [True, False])
@pytest.mark.parametrize("margin", [0.5, 1.0, 1.5])
@pytest.mark.parametrize("distance", DISTANCES)
def test_max_margin_matches_the_tfa_reference(distance, margin, use_labels, dtype, rtol):
    features = unit_features(6, 3, 5, seed=1)
    labels = LABELS if use_labels else None
    ref, ref_grad = loss_and_grad(lambda x: tfa_max_margin(x, labels, margin, distance)[0], features)
    ref_none = tfa_max_margin(features, labels, margin, distance)[1]
    kw = dict(margin=margin, distance=distance, block_size=4)
    ours, grad = loss_and_grad(lambda x: max_margin_loss(x, labels, **kw), features.to(dtype))
    ours_none, grad_none = loss_and_grad(lambda x: max_margin_loss(x, labels, reduction="none", **kw),
                                         features.to(dtype))
    _, ref_grad_none = loss_and_grad(lambda x: tfa_max_margin(x, labels, margin, distance)[1], features)
    assert ours.dtype == dtype and ours.shape == () and ours_none.shape == (6, 3)
    torch.testing.assert_close(ours.double(), ref, rtol=rtol, atol=rtol * 1e-3)
    torch.testing.assert_close(ours_none.double(), ref_none, rtol=rtol, atol=rtol * 1e-3)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol, atol=rtol * ref_grad.abs().max().item())
    torch.testing.assert_close(grad_none.double(), ref_grad_none, rtol=rtol,
                               atol=rtol * ref_grad_none.abs().max().item())


def test_max_margin_euclidean_is_exact_off_the_sphere():
    """The Euclidean distance is the true one, so unnormalised features give tfa's value too."""
    features = torch.randn(5, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.6
    ref, ref_grad = loss_and_grad(lambda x: tfa_max_margin(x, LABELS[:5], 1.2)[0], features)
    ours, grad = loss_and_grad(lambda x: max_margin_loss(x, LABELS[:5], margin=1.2), features)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("use_labels", [True, False])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
def test_npairs_matches_the_keras_reference(temperature, use_labels, dtype, rtol):
    features = unit_features(6, 3, 5, seed=2)
    labels = LABELS if use_labels else None
    ref, ref_grad = loss_and_grad(lambda x: tfa_npairs(x, labels, temperature)[0], features)
    ref_none, ref_grad_none = loss_and_grad(lambda x: tfa_npairs(x, labels, temperature)[1], features)
    kw = dict(temperature=temperature, block_size=5)
    ours, grad = loss_and_grad(lambda x: npairs_loss(x, labels, **kw), features.to(dtype))
    ours_none, grad_none = loss_and_grad(lambda x: npairs_loss(x, labels, reduction="none", **kw), features.to(dtype))
    assert ours.dtype == dtype and ours.shape == () and ours_none.shape == (6, 3)
    torch.testing.assert_close(ours.double(), ref, rtol=rtol, atol=0)
    torch.testing.assert_close(ours_none.double(), ref_none, rtol=rtol, atol=rtol * 1e-2)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol, atol=rtol * ref_grad.abs().max().item())
    torch.testing.assert_close(grad_none.double(), ref_grad_none, rtol=rtol,
                               atol=rtol * ref_grad_none.abs().max().item())


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("loss", ["euclidean", "cosine", "npairs"])
def test_gradcheck(loss, reduction):
    x = unit_features(5, 2, 4, seed=4).requires_grad_(True)
    labels = torch.tensor([0, 1, 0, 2, 1])
    if loss == "npairs":
        fn = lambda x: npairs_loss(x, labels, temperature=0.5, reduction=reduction, block_size=3)  # noqa: E731
    else:
        fn = lambda x: max_margin_loss(x, labels, distance=loss, reduction=reduction, block_size=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))


def test_closed_forms():
    # Two orthogonal unit vectors: Euclidean distance sqrt(2), cosine distance 1.
    axes = torch.eye(2, dtype=torch.float64).view(2, 1, 2)
    apart, together = torch.tensor([0, 1]), torch.tensor([0, 0])
    assert max_margin_loss(axes, apart).item() == 0  # sqrt(2) > margin 1
    assert max_margin_loss(axes, apart, margin=2.0).item() == pytest.approx((2 - math.sqrt(2)) ** 2)
    assert max_margin_loss(axes, apart, distance="cosine").item() == 0  # 1 - 1 = 0
    assert max_margin_loss(axes, apart, distance="cosine", margin=1.5).item() == pytest.approx(0.25)
    assert max_margin_loss(axes, together).item() == pytest.approx(2.0)
    assert max_margin_loss(axes, together, distance="cosine").item() == pytest.approx(1.0)
    # Each class collapsed to one point, classes orthogonal: npairs reaches its floor log n_i as tau -> 0,
    # and at tau = 1 it is log(n + (N - n) / e) exactly.
    collapsed = torch.eye(3, dtype=torch.float64)[[0, 0, 1, 1, 2, 2]].view(6, 1, 3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert npairs_loss(collapsed, labels, temperature=0.01).item() == pytest.approx(math.log(2), rel=1e-9)
    assert npairs_loss(collapsed, labels, temperature=1.0).item() == pytest.approx(math.log(2 + 4 / math.e))
    # An anchor without another positive still has a loss: it is its own positive.
    assert npairs_loss(axes, apart, temperature=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))


@pytest.mark.parametrize("loss", ["euclidean", "cosine", "npairs"])
def test_block_size_does_not_change_the_result(loss):
    features = unit_features(11, 2, 6, seed=5)
    labels = torch.tensor([-7, 12, -7, 40, 3, 12, 3, -7, 1000, 1000, 3])

    def run(block_size, reduction="mean"):
        if loss == "npairs":
            fn = lambda x: npairs_loss(x, labels, block_size=block_size, reduction=reduction)  # noqa: E731
        else:
            fn = lambda x: max_margin_loss(x, labels, distance=loss, block_size=block_size,  # noqa: E731
                                           reduction=reduction)
        return loss_and_grad(fn, features)

    base, base_grad = run(None)
    base_none, base_grad_none = run(None, "none")
    for block_size in (1, 3, 21, 22, 50):
        value, grad = run(block_size)
        torch.testing.assert_close(value, base, rtol=1e-12, atol=0)
        torch.testing.assert_close(grad, base_grad, rtol=1e-10, atol=1e-14)
        value, grad = run(block_size, "none")
        torch.testing.assert_close(value, base_none, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(grad, base_grad_none, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(base_none.mean(), base)  # the mean of the per-anchor losses is the loss


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("loss", ["euclidean", "cosine", "npairs"])
def test_never_materialises_n_by_n(loss, reduction):
    batch, views, dim, block = 200, 2, 4, 16
    n = batch * views
    x = unit_features(batch, views, dim, seed=14, dtype=torch.float32).requires_grad_(True)
    labels = torch.arange(batch) % 7
    with LargestTensor() as mode:
        if loss == "npairs":
            value = npairs_loss(x, labels, reduction=reduction, block_size=block)
        else:
            value = max_margin_loss(x, labels, distance=loss, reduction=reduction, block_size=block)
        value.sum().backward()
    assert mode.largest <= block * n < n * n


@pytest.mark.parametrize("seed", range(3))
def test_invariant_to_batch_order_and_label_values(seed):
    g = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(3, 12, (1,), generator=g))
    features = unit_features(batch, 2, 6, seed=seed + 100)
    labels = torch.randint(-3, 4, (batch,), generator=g)
    perm = torch.randperm(batch, generator=g)
    for fn in (max_margin_loss, npairs_loss):
        torch.testing.assert_close(fn(features[perm], labels[perm], block_size=3), fn(features, labels))
        torch.testing.assert_close(fn(features[perm], labels[perm], reduction="none"),
                                   fn(features, labels, reduction="none")[perm])
        torch.testing.assert_close(fn(features, labels * 1000 + 7), fn(features, labels))


def test_coincident_negatives_give_a_finite_gradient():
    x = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]]).requires_grad_(True)
    loss = max_margin_loss(x, torch.tensor([0, 1, 1]))
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_returns_fp32(dtype):
    x = unit_features(8, 2, 16, seed=3, dtype=dtype).requires_grad_(True)
    for fn in (max_margin_loss, npairs_loss):
        loss = fn(x, LABELS.repeat(2)[:8])
        loss.backward()
        assert loss.dtype == torch.float32 and x.grad.dtype == dtype
        x.grad = None


def test_no_grad_and_modules():
    features = unit_features(6, 2, 5)
    with torch.no_grad():
        assert max_margin_loss(features.requires_grad_(True), LABELS).requires_grad is False
    assert MaxMarginContrastiveLoss(margin=0.5, distance="cosine")(features, LABELS) == max_margin_loss(
        features, LABELS, margin=0.5, distance="cosine")
    assert NPairsLoss(0.2)(features, LABELS) == npairs_loss(features, LABELS, temperature=0.2)
    assert "distance='euclidean'" in repr(MaxMarginContrastiveLoss()) and "temperature=0.1" in repr(NPairsLoss())


@pytest.mark.parametrize(
    "make,kwargs,fragment",
    [
        (MaxMarginContrastiveLoss, dict(margin=0.0), "margin > 0"),
        (MaxMarginContrastiveLoss, dict(margin=-1.0), "margin > 0"),
        (MaxMarginContrastiveLoss, dict(margin=float("nan")), "margin > 0"),
        (MaxMarginContrastiveLoss, dict(distance="manhattan"), "distance"),
        (MaxMarginContrastiveLoss, dict(reduction="sum"), "reduction"),
        (MaxMarginContrastiveLoss, dict(block_size=0), "block_size"),
        (NPairsLoss, dict(temperature=0.0), "temperature > 0"),
        (NPairsLoss, dict(reduction="sum"), "reduction"),
        (NPairsLoss, dict(block_size=2.5), "block_size"),
    ],
)
def test_invalid_options(make, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        make(**kwargs)
    functional = max_margin_loss if make is MaxMarginContrastiveLoss else npairs_loss
    with pytest.raises(ValueError, match=fragment):
        functional(unit_features(2, 2, 3), **kwargs)


@pytest.mark.parametrize(
    "features,labels",
    [
        (torch.randn(4, 8), None),
        (torch.randn(2, 2, 2, 3), None),
        (torch.ones(3, 2, 4, dtype=torch.long), None),
        (torch.randn(1, 1, 4), None),
        (torch.randn(3, 2, 4), torch.tensor([0, 1])),
        (torch.randn(3, 2, 4), torch.zeros(3, 1, dtype=torch.long)),
        (torch.randn(3, 2, 4), torch.tensor([0.0, 1.0, 0.0])),
        (torch.randn(3, 2, 4), torch.tensor([True, False, True])),
    ],
)
def test_invalid_inputs_give_supcons_messages(features, labels):
    with pytest.raises(ValueError) as expected:
        SupConLoss()(features, labels)
    for loss in (MaxMarginContrastiveLoss(), NPairsLoss()):
        with pytest.raises(ValueError) as got:
            loss(features, labels)
        assert str(got.value) == str(expected.value) and "\n" not in str(got.value)
