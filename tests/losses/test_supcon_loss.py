"""Tests for supcon.losses: an independent dense float64 reference, the official implementation's golden
values, pytorch-metric-learning as an oracle, gradients, blocking, edge cases and input validation. The dense path
(one block, nothing read back: what CUDA takes up to N x N = 1 GiB) and the blocked path, also in its sync-free
form (what CUDA runs beyond), are each checked against the reference and against each other on the CPU."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import HostReads, LargestTensor, ToList

from supcon.losses import SupConLoss, supcon_loss
from supcon.losses import supcon as supcon_module

VARIANTS = ["out", "in"]
MODES = ["all", "one"]
PATHS = ["dense", "blocked"]


def reference(features, labels, temperature, base_temperature=None, variant="out", contrast_mode="all"):
    """Textbook SupCon in float64, one anchor at a time. Returns ([B, V_anchor] losses, validity mask)."""
    batch, views, _ = features.shape
    z = torch.cat(torch.unbind(features.double(), dim=1))
    y = (torch.arange(batch) if labels is None else labels.cpu()).repeat(views).tolist()
    n = len(y)
    num_anchors = batch if contrast_mode == "one" else n
    scale = temperature / (base_temperature or temperature)
    losses, valid = [], []
    for i in range(num_anchors):
        others = [a for a in range(n) if a != i]
        pos = [p for p in others if y[p] == y[i]]
        valid.append(bool(pos))
        if not pos:
            losses.append(z.new_zeros(()))
            continue
        s = z[i] @ z.T / temperature
        denominator = torch.exp(s[others]).sum()
        if variant == "out":
            loss = -torch.stack([torch.log(torch.exp(s[p]) / denominator) for p in pos]).mean()
        else:
            loss = -torch.log(torch.stack([torch.exp(s[p]) for p in pos]).mean() / denominator)
        losses.append(scale * loss)
    per_anchor = torch.stack(losses).view(num_anchors // batch, batch).T
    return per_anchor, torch.tensor(valid).view(num_anchors // batch, batch).T


def reference_mean(*args, **kwargs):
    per_anchor, valid = reference(*args, **kwargs)
    return per_anchor[valid].mean()


def unit_features(batch, views, dim, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, views, dim, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def loss_and_grad(fn, features, *args, **kwargs):
    x = features.clone().requires_grad_(True)
    loss = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


LABELS = torch.tensor([3, 1, 3, 0, 1, 3])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
@pytest.mark.parametrize("use_labels", [True, False])
@pytest.mark.parametrize("contrast_mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_dense_reference(variant, contrast_mode, use_labels, temperature, dtype, rtol, path):
    features = unit_features(6, 3, 5, seed=1)
    labels = LABELS if use_labels else None
    kw = dict(temperature=temperature, variant=variant, contrast_mode=contrast_mode)
    ref, ref_grad = loss_and_grad(lambda x: reference_mean(x, labels, **kw), features)
    ref_none = reference(features, labels, **kw)[0]
    ours, grad = loss_and_grad(lambda x: supcon_loss(x, labels, path=path, **kw), features.to(dtype))
    ours_none = supcon_loss(features.to(dtype), labels, reduction="none", path=path, **kw)
    assert ours.dtype == dtype and ours.shape == ()
    torch.testing.assert_close(ours.double(), ref, rtol=rtol, atol=0)
    torch.testing.assert_close(ours_none.double(), ref_none, rtol=rtol, atol=rtol * 1e-2)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol, atol=rtol * ref_grad.abs().max().item())


@pytest.mark.parametrize("variant", VARIANTS)
def test_base_temperature_rescales(variant):
    features, kw = unit_features(6, 2, 4, seed=2), dict(temperature=0.1, variant=variant)
    ours = SupConLoss(base_temperature=0.07, **kw)(features, LABELS)
    torch.testing.assert_close(ours, reference_mean(features, LABELS, base_temperature=0.07, **kw))
    torch.testing.assert_close(ours, supcon_loss(features, LABELS, **kw) * (0.1 / 0.07))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("contrast_mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck(variant, contrast_mode, reduction, path):
    # Unnormalised features, labels with a singleton class (an anchor without positives when V=1 is
    # covered separately) and a block size that does not divide N.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 2, 0, 2, 9])
    kw = dict(
        temperature=0.5, variant=variant, contrast_mode=contrast_mode, reduction=reduction, block_size=3, path=path
    )
    assert torch.autograd.gradcheck(lambda x: supcon_loss(x, labels, **kw), (x,))


# Golden values from google-research/google-research supcon/losses_test.py
# (testLossForSummationLocationsAndDenominatorModes, denominator_mode=ALL, no positives cap). That test
# feeds these raw, *unnormalised* features with temperature=1.0 and scale_by_temperature=True (the loss
# is multiplied by tau = 1), i.e. tau_b = tau here. Its per-sample loss is the mean over the sample's views
# of the per-anchor losses, which is reduction="none" averaged over dim 1.
GOLDEN_FEATURES = [
    [[0.01, 0.02, 0.14], [0.38, 0.61, 0.50]],
    [[0.86, 0.97, 0.33], [0.26, 0.68, 0.45]],
    [[0.32, 0.64, 0.28], [0.45, 0.74, 0.73]],
]
GOLDEN = {"out": [1.6755852, 1.7973773, 1.58471], "in": [1.6356678, 1.7135872, 1.58471]}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", VARIANTS)
def test_official_golden_values(variant, dtype, path):
    features = torch.tensor(GOLDEN_FEATURES, dtype=dtype)
    per_anchor = supcon_loss(
        features, torch.tensor([0, 0, 1]), temperature=1.0, variant=variant, reduction="none", path=path
    )
    assert per_anchor.shape == (3, 2)
    torch.testing.assert_close(
        per_anchor.mean(1), torch.tensor(GOLDEN[variant], dtype=dtype), rtol=0, atol=5e-6
    )


def test_official_closed_form_values():
    # Further cases of the same official test file, whose expected values are closed forms.
    s2, s6 = math.sqrt(2), math.sqrt(6)
    tetrahedron = torch.tensor(
        [[[0, 0, 1], [0, 2 * s2 / 3, -1 / 3]], [[s6 / 3, -s2 / 3, -1 / 3], [-s6 / 3, -s2 / 3, -1 / 3]]]
    )
    # testLossValue / testLossValueWithLabels: every pair has similarity -1/3, one positive each.
    assert supcon_loss(tetrahedron, temperature=1.0).item() == pytest.approx(math.log(3), abs=1e-6)
    assert supcon_loss(tetrahedron, torch.tensor([0, 1]), temperature=1.0).item() == pytest.approx(
        math.log(3)
    )
    # testLossValueWithTemp (scale_by_temperature multiplies by tau, i.e. tau_b = 1) and ...NoScaleByTemp.
    assert supcon_loss(tetrahedron, temperature=0.1, base_temperature=1.0).item() == pytest.approx(
        0.1 * math.log(3), rel=1e-5
    )
    assert supcon_loss(tetrahedron, temperature=0.1).item() == pytest.approx(math.log(3), rel=1e-5)
    # testContrastModeOneVsAll.
    orthogonal = torch.tensor([[[0.0, 0, 1], [0, 1, 0]], [[1, 0, 0], [0, -1, 0]]])
    assert supcon_loss(orthogonal, temperature=1.0, contrast_mode="one").item() == pytest.approx(math.log(3))
    assert supcon_loss(orthogonal, temperature=1.0).item() != pytest.approx(math.log(3))
    # testLossValueWithLabelsAndPositives.
    axes = torch.eye(3).flip(1)[:, None, :].repeat(1, 2, 1)
    per_sample = supcon_loss(axes, torch.tensor([0, 0, 1]), temperature=1.0, reduction="none").mean(1)
    log_e4 = math.log(math.e + 4)
    torch.testing.assert_close(per_sample, torch.tensor([(3 * log_e4 - 1) / 3] * 2 + [log_e4 - 1]))


def test_official_one_view_value():
    # testLossForOneView: one view, the third sample has no positive and gets 0.
    f = torch.tensor(GOLDEN_FEATURES, dtype=torch.float64)[:, :1]
    loss = supcon_loss(f, torch.tensor([1, 1, 2]), temperature=1.0, reduction="none")[:, 0]
    z = f[:, 0]
    expected = [-torch.log_softmax(z[i] @ z[[1 - i, 2]].T, 0)[0] for i in (0, 1)] + [torch.tensor(0.0)]
    torch.testing.assert_close(loss, torch.stack(expected).double())


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_matches_pytorch_metric_learning(temperature, views):
    pml = pytest.importorskip(
        "pytorch_metric_learning.losses", reason="pytorch-metric-learning not installed"
    )
    # PML normalises internally (cosine similarity) and has no tau/tau_b factor: our tau_b = tau.
    # Its AvgNonZeroReducer drops anchors with zero loss, i.e. those without positives, like ours.
    # Our side normalises explicitly so that the gradients see the same normalisation Jacobian.
    features = unit_features(8, views, 6, seed=4)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 5, 2])  # class 5 is a singleton
    criterion = SupConLoss(temperature=temperature)
    ours, grad = loss_and_grad(lambda x: criterion(F.normalize(x, dim=-1), labels), features)
    oracle = pml.SupConLoss(temperature=temperature)
    theirs, their_grad = loss_and_grad(
        lambda x: oracle(torch.cat(torch.unbind(x, dim=1)), labels.repeat(views)), features
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0)
    torch.testing.assert_close(grad, their_grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("contrast_mode", MODES)
def test_block_size_does_not_change_result(variant, contrast_mode):
    features, labels = unit_features(5, 3, 4, seed=5), torch.tensor([4, 4, 1, 0, 1])  # N = 15
    for reduction in ("mean", "none"):
        kw = dict(variant=variant, contrast_mode=contrast_mode, reduction=reduction, temperature=0.2)
        base, base_grad = loss_and_grad(supcon_loss, features, labels, block_size=15, **kw)
        for block_size in (1, 3, 7, 16, 1000):
            loss, grad = loss_and_grad(supcon_loss, features, labels, block_size=block_size, **kw)
            torch.testing.assert_close(loss, base, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(grad, base_grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variant", VARIANTS)
def test_arbitrary_integer_labels(variant):
    features = unit_features(6, 2, 4, seed=6)
    raw = torch.tensor([-5, 10**12, -5, 7, 10**12, 0])
    dense = torch.tensor([0, 3, 0, 2, 3, 1])
    for reduction in ("mean", "none"):
        kw = dict(variant=variant, reduction=reduction)
        torch.testing.assert_close(supcon_loss(features, raw, **kw), supcon_loss(features, dense, **kw))
    small = torch.tensor([-3, 2, -3, 7, 2, 0], dtype=torch.int8)
    torch.testing.assert_close(supcon_loss(features, small), supcon_loss(features, dense))


@pytest.mark.parametrize("variant", VARIANTS)
def test_anchors_without_positives_are_excluded(variant):
    features, labels = unit_features(5, 1, 4, seed=7), torch.tensor([0, 0, 1, 2, 1])  # sample 3 is alone
    loss, grad = loss_and_grad(lambda x: supcon_loss(x, labels, variant=variant), features)
    per_anchor = supcon_loss(features, labels, variant=variant, reduction="none")
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and torch.isfinite(per_anchor).all()
    assert per_anchor[3, 0] == 0 and (per_anchor[[0, 1, 2, 4], 0] > 0).all()
    torch.testing.assert_close(loss, per_anchor[[0, 1, 2, 4]].mean())
    torch.testing.assert_close(loss, reference_mean(features, labels, 0.1, variant=variant))


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_positives_at_all_gives_connected_zero(variant):
    x = unit_features(4, 1, 3, seed=8).requires_grad_(True)
    loss = supcon_loss(x, torch.tensor([0, 1, 2, 3]), variant=variant)
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert torch.equal(supcon_loss(x, variant=variant, reduction="none"), torch.zeros(4, 1, dtype=x.dtype))


@pytest.mark.parametrize("variant", VARIANTS)
def test_single_view_with_repeated_labels(variant):
    features, labels = unit_features(7, 1, 5, seed=9), torch.tensor([1, 0, 1, 0, 0, 2, 2])
    for mode in MODES:  # with one view both modes use the same anchors
        kw = dict(variant=variant, contrast_mode=mode, temperature=0.3)
        ref, ref_grad = loss_and_grad(reference_mean, features, labels, **kw)
        loss, grad = loss_and_grad(supcon_loss, features, labels, **kw)
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(grad, ref_grad)


def test_reduction_none_shapes_and_mean():
    features = unit_features(4, 3, 5, seed=10)
    labels = torch.tensor([0, 1, 0, 1])
    assert SupConLoss(reduction="none")(features, labels).shape == (4, 3)
    one = SupConLoss(reduction="none", contrast_mode="one")(features, labels)
    assert one.shape == (4, 1)
    torch.testing.assert_close(one.mean(), SupConLoss(contrast_mode="one")(features, labels))


def test_no_grad_and_detached_inputs():
    features = unit_features(6, 2, 4, seed=11)
    with torch.no_grad():
        a = supcon_loss(features.clone().requires_grad_(True), LABELS)
    assert not a.requires_grad
    torch.testing.assert_close(a, supcon_loss(features, LABELS))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_returns_fp32(dtype):
    x = unit_features(6, 2, 8, seed=12, dtype=dtype).requires_grad_(True)
    loss = supcon_loss(x, LABELS)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    torch.testing.assert_close(loss.double(), reference_mean(x.detach(), LABELS, 0.1), rtol=1e-5, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("block_size", [16, None])  # blocked; dense (automatic on CUDA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(dtype, block_size):
    features = unit_features(64, 2, 32, seed=13)
    labels = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
    x = features.to("cuda", dtype).requires_grad_(True)
    loss = supcon_loss(x, labels.cuda(), block_size=block_size)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype
    rtol = 1e-5 if dtype == torch.float32 else 1e-4  # the input itself is rounded for half types
    expected = reference_mean(x.detach().cpu(), labels, 0.1)
    torch.testing.assert_close(loss.cpu().double(), expected, rtol=rtol, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_never_materialises_n_by_n(variant, reduction):
    batch, views, dim, block = 200, 2, 4, 16
    n = batch * views
    x = unit_features(batch, views, dim, seed=14, dtype=torch.float32).requires_grad_(True)
    labels = torch.arange(batch) % 7
    with LargestTensor() as mode:
        loss = supcon_loss(x, labels, variant=variant, reduction=reduction, block_size=block)
        loss.sum().backward()
    assert mode.largest <= block * n < n * n


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("variant", VARIANTS)
def test_invariant_to_batch_permutation(variant, seed):
    g = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(2, 12, (1,), generator=g))
    features = unit_features(batch, 2, 6, seed=seed + 100)
    labels = torch.randint(-3, 4, (batch,), generator=g)
    perm = torch.randperm(batch, generator=g)
    for mode in MODES:
        kw = dict(variant=variant, contrast_mode=mode, block_size=3)
        torch.testing.assert_close(
            supcon_loss(features[perm], labels[perm], **kw), supcon_loss(features, labels, **kw)
        )
        torch.testing.assert_close(
            supcon_loss(features[perm], labels[perm], reduction="none", **kw),
            supcon_loss(features, labels, reduction="none", **kw)[perm],
        )


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(temperature=0.0), "temperature > 0"),
        (dict(temperature=-1.0), "temperature > 0"),
        (dict(base_temperature=0.0), "base_temperature > 0"),
        (dict(variant="both"), "variant"),
        (dict(contrast_mode="two"), "contrast_mode"),
        (dict(reduction="sum"), "reduction"),
        (dict(block_size=0), "block_size"),
        (dict(block_size=2.5), "block_size"),
        (dict(path="fast"), "path"),
    ],
)
def test_invalid_options(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        SupConLoss(**kwargs)
    with pytest.raises(ValueError, match=fragment):
        supcon_loss(unit_features(2, 2, 3), **kwargs)


@pytest.mark.parametrize(
    "features,labels,fragment",
    [
        (torch.randn(4, 8), None, r"expected features shaped \[batch, views, dim\], got shape \(4, 8\)"),
        (torch.randn(2, 2, 2, 3), None, "expected features shaped"),
        (torch.ones(3, 2, 4, dtype=torch.long), None, "floating-point features"),
        (torch.randn(1, 1, 4), None, "at least 2 feature vectors"),
        (torch.randn(3, 2, 4), torch.tensor([0, 1]), r"labels shaped \[3\]"),
        (torch.randn(3, 2, 4), torch.zeros(3, 1, dtype=torch.long), r"labels shaped \[3\]"),
        (torch.randn(3, 2, 4), torch.tensor([0.0, 1.0, 0.0]), "integer labels"),
        (torch.randn(3, 2, 4), torch.tensor([True, False, True]), "integer labels"),
    ],
)
def test_invalid_inputs(features, labels, fragment):
    with pytest.raises(ValueError, match=fragment):
        SupConLoss()(features, labels)


# --- Blocked fast path: exactness whatever the block size, including the automatic one ---------------------------

from supcon.losses.supcon import _auto_block_size  # noqa: E402


def dense_reference(features, labels, temperature, variant="out", contrast_mode="all"):
    """Vectorised float64 reference (log_softmax over the contrast set) for sizes where `reference` is too slow."""
    batch, views, _ = features.shape
    z = torch.cat(torch.unbind(features.double(), dim=1))
    y = (torch.arange(batch) if labels is None else labels).repeat(views)
    n = z.shape[0]
    num_anchors = batch if contrast_mode == "one" else n
    is_self = torch.zeros(num_anchors, n, dtype=torch.bool)
    is_self[torch.arange(num_anchors), torch.arange(num_anchors)] = True
    log_prob = torch.log_softmax((z[:num_anchors] @ z.T / temperature).masked_fill(is_self, -math.inf), dim=1)
    pos = (y[:num_anchors, None] == y[None, :]) & ~is_self
    valid = pos.any(1)
    log_prob, pos, num_pos = log_prob[valid], pos[valid], pos[valid].sum(1)
    if variant == "out":
        per_anchor = -log_prob.masked_fill(~pos, 0).sum(1) / num_pos
    else:
        per_anchor = num_pos.log() - torch.logsumexp(log_prob.masked_fill(~pos, -math.inf), dim=1)
    return per_anchor.mean()


# Labels with gaps, negative values and a singleton (class 40), so some anchors have no positive when V = 1.
GAPPY = torch.tensor([-7, 12, -7, 40, 3, 12, 3, -7, 1000, 1000, 3])


@pytest.mark.parametrize("views", [1, 3])
@pytest.mark.parametrize("contrast_mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_for_every_block_size(variant, contrast_mode, views):
    # N = 11 or 33 vectors: block sizes below, equal to, above N and not dividing it, plus the automatic one.
    features = unit_features(len(GAPPY), views, 5, seed=20)
    kw = dict(temperature=0.07, variant=variant, contrast_mode=contrast_mode)
    ref, ref_grad = loss_and_grad(lambda x: reference_mean(x, GAPPY, **kw), features)
    ref_none = reference(features, GAPPY, **kw)[0]
    n = len(GAPPY) * views
    for block_size in (None, 1, 2, 4, n - 1, n, n + 5):
        x = features.float()
        loss, grad = loss_and_grad(supcon_loss, x, GAPPY, block_size=block_size, **kw)
        torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-5 * ref_grad.abs().max().item())
        per_anchor, grad_none = loss_and_grad(supcon_loss, x, GAPPY, block_size=block_size, reduction="none", **kw)
        torch.testing.assert_close(per_anchor.double(), ref_none, rtol=1e-5, atol=1e-7)
        assert torch.isfinite(grad_none).all()


@pytest.mark.parametrize("contrast_mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_with_automatic_blocks_at_moderate_n(variant, contrast_mode):
    # N = 2,500: the automatic block size gives several blocks (1024 rows) and N is not a multiple of it, so the
    # fast path's block loop, L_in's label windows and the partial last block are all exercised.
    batch, views = 1250, 2
    assert _auto_block_size(batch * views, batch * views) == 1024
    g = torch.Generator().manual_seed(21)
    features = unit_features(batch, views, 16, seed=22)
    labels = torch.randint(-5, 25, (batch,), generator=g) * 3  # gaps and negative values
    kw = dict(temperature=0.1, variant=variant, contrast_mode=contrast_mode)
    ref, ref_grad = loss_and_grad(lambda x: dense_reference(x, labels, **kw), features)
    loss, grad = loss_and_grad(supcon_loss, features.float(), labels, **kw)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-5 * ref_grad.abs().max().item())
    # SimCLR mode (each sample its own class) through the same path, with a block size that does not divide N.
    ref, ref_grad = loss_and_grad(lambda x: dense_reference(x, None, **kw), features)
    loss, grad = loss_and_grad(supcon_loss, features.float(), None, block_size=300, **kw)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-5 * ref_grad.abs().max().item())


def test_automatic_block_size():
    for n in (2, 7, 1000, 1024, 2500, 4096, 8192, 16384, 65536, 1 << 20):
        for num_anchors in (n, max(1, n // 2)):
            rows = _auto_block_size(num_anchors, n)
            assert 1 <= rows <= num_anchors
            assert rows == num_anchors or rows & (rows - 1) == 0  # a power of two unless all anchors fit
            assert rows * n <= max(1 << 25, n)  # the [block, N] buffer stays within 128 MiB of fp32
    assert _auto_block_size(1024, 1024) == 1024  # small N: one block
    assert _auto_block_size(65536, 65536) == 512  # 128 MiB: the 512 MiB budget at N = 65k holds
    features, labels = unit_features(40, 2, 6, seed=23, dtype=torch.float32), torch.arange(40) % 3
    torch.testing.assert_close(supcon_loss(features, labels), SupConLoss(block_size=None)(features, labels))
    assert SupConLoss().block_size is None


@pytest.mark.parametrize("path", ["dense", "blocked", "blocked-sync-free"])
@pytest.mark.parametrize("contrast_mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_when_positives_underflow(variant, contrast_mode, path, monkeypatch):
    # tau = 0.01 with anti-parallel positives: exp(s_ip - max_a s_ia) = exp(-200) underflows in fp32, so L_in
    # must fall back to a per-row positive maximum; L_out never exponentiates the positives.
    g = torch.Generator().manual_seed(24)
    base = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=-1)
    features = torch.stack([base, -base], dim=1)  # the two views of a sample point in opposite directions
    labels = torch.arange(6)
    kw = dict(temperature=0.01, variant=variant, contrast_mode=contrast_mode)
    ref, ref_grad = loss_and_grad(lambda x: reference_mean(x, labels, **kw), features)
    if path == "blocked-sync-free":  # CUDA's way: every positive sum with its own maximum, nothing checked
        monkeypatch.setattr(supcon_module, "_sync_free", lambda device: True)
    for block_size in (None, 4):
        loss, grad = loss_and_grad(supcon_loss, features.float(), labels, block_size=block_size,
                                   path=path.removesuffix("-sync-free"), **kw)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-5 * ref_grad.abs().max().item())


def test_results_do_not_alias_reused_buffers():
    # The CPU scratch buffers are reused across calls; nothing returned may live in them.
    a, b = unit_features(30, 2, 8, seed=25, dtype=torch.float32), unit_features(50, 2, 8, seed=26, dtype=torch.float32)
    labels_a, labels_b = torch.arange(30) % 4, torch.arange(50) % 3
    for variant in VARIANTS:
        for reduction in ("mean", "none"):
            kw = dict(variant=variant, reduction=reduction)
            first, first_grad = loss_and_grad(supcon_loss, a, labels_a, **kw)
            kept, kept_grad = first.clone(), first_grad.clone()
            loss_and_grad(supcon_loss, b, labels_b, **kw)
            assert torch.equal(first, kept) and torch.equal(first_grad, kept_grad)
            again, again_grad = loss_and_grad(supcon_loss, a, labels_a, **kw)
            assert torch.equal(again, kept) and torch.equal(again_grad, kept_grad)


def test_inference_mode_then_training():
    # An evaluation call under inference_mode must not leave behind a buffer that training calls cannot write to.
    features, labels = unit_features(12, 2, 6, seed=27, dtype=torch.float32), torch.arange(12) % 4
    for variant in VARIANTS:
        with torch.inference_mode():
            evaluated = supcon_loss(features, labels, variant=variant)
        loss, grad = loss_and_grad(supcon_loss, features, labels, variant=variant)
        torch.testing.assert_close(loss, evaluated)
        assert torch.isfinite(grad).all()


# --- Anchor subsets: a data-parallel process's share of the batch's loss ---------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("use_labels", [True, False])
@pytest.mark.parametrize("contrast_mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_anchor_subsets_partition_the_loss(variant, contrast_mode, use_labels, path):
    features = unit_features(7, 3, 5, seed=21)
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 5]) if use_labels else None  # sample 6 has no positive but its views
    kw = dict(variant=variant, contrast_mode=contrast_mode, temperature=0.2)
    full, full_grad = loss_and_grad(supcon_loss, features, labels, path=path, **kw)
    ref_none = reference(features, labels, **kw)[0]
    parts = [torch.tensor([0, 1, 2]), torch.tensor([6, 3]), torch.tensor([5]), torch.tensor([4])]
    total, total_grad = 0, 0
    for block_size in (None, 2):
        total, total_grad = 0, 0
        for part in parts:
            share, grad = loss_and_grad(supcon_loss, features, labels, anchors=part, block_size=block_size,
                                        path=path, **kw)
            total, total_grad = total + share, total_grad + grad
            per_anchor = supcon_loss(features, labels, anchors=part, reduction="none", block_size=block_size,
                                     path=path, **kw)
            torch.testing.assert_close(per_anchor, ref_none[part], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(total, full, rtol=1e-10, atol=0)
        torch.testing.assert_close(total_grad, full_grad, rtol=1e-10, atol=1e-12)


def test_anchors_covering_the_batch_give_the_plain_loss():
    features = unit_features(5, 2, 4, seed=22)
    torch.testing.assert_close(supcon_loss(features, LABELS[:5], anchors=torch.arange(5)),
                               supcon_loss(features, LABELS[:5]), rtol=0, atol=0)
    torch.testing.assert_close(SupConLoss()(features, LABELS[:5], anchors=[4, 0, 3, 1, 2]),
                               supcon_loss(features, LABELS[:5]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("anchors,fragment", [([0, 0], "distinct"), ([5], r"in \[0, 5\)"), ([-1], "distinct"),
                                              ([], "non-empty"), ([[0]], "1-D"), ([0.5], "integer")])
def test_invalid_anchors(anchors, fragment):
    with pytest.raises(ValueError, match=fragment):
        supcon_loss(unit_features(5, 2, 4), anchors=torch.tensor(anchors))


# --- The dense path and the sync-free blocked path: what CUDA runs ---------------------------------------------------


@pytest.fixture
def sync_free(monkeypatch):
    """The blocked pass as it runs off the CPU: nothing read back inside the block loop."""
    monkeypatch.setattr(supcon_module, "_sync_free", lambda device: True)


CONFIGS = [dict(variant=v, contrast_mode=m, labels=lab) for v in VARIANTS for m in MODES for lab in ("gappy", None)]


def config_id(c):
    return f"{c['variant']}-{c['contrast_mode']}-{'labels' if c['labels'] else 'simclr'}"


@pytest.mark.parametrize("anchors", [None, torch.tensor([9, 0, 4, 2, 7])], ids=["all", "subset"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_dense_blocked_and_sync_free_blocked_agree_with_the_reference(config, reduction, anchors, monkeypatch):
    """fp32, N = 33 (11 samples x 3 views, gapped labels, a singleton class): the dense path, the blocked path with
    blocks that do not divide N, and the blocked path without reads back, against the float64 reference (1e-5)
    and against each other (values and gradients)."""
    features = unit_features(len(GAPPY), 3, 5, seed=30)
    labels = GAPPY if config["labels"] else None
    kw = dict(temperature=0.07, variant=config["variant"], contrast_mode=config["contrast_mode"])
    ref_none = reference(features, labels, **kw)[0]
    if anchors is not None:
        ref_none = ref_none[anchors]
    x = features.float()
    runs = {}
    for name, path, block_size in [("dense", "dense", None), ("blocked", "blocked", 4), ("blocked-7", "blocked", 7),
                                   ("sync-free", "blocked", 4)]:
        if name == "sync-free":
            monkeypatch.setattr(supcon_module, "_sync_free", lambda device: True)
        runs[name] = loss_and_grad(supcon_loss, x, labels, anchors=anchors, reduction=reduction, path=path,
                                   block_size=block_size, **kw)
    if reduction == "mean":
        ref, ref_grad = loss_and_grad(lambda f: reference_mean(f, labels, **kw), features)
        if anchors is not None:  # a subset's share: its anchors' losses over the whole batch's count
            _, valid = reference(features, labels, **kw)
            ref = reference(features, labels, **kw)[0][anchors].sum() / valid.sum()
            ref_grad = None
    for name, (loss, grad) in runs.items():
        if reduction == "mean":
            torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0, msg=name)
            if ref_grad is not None:
                scale = ref_grad.abs().max().item()
                torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-5 * scale, msg=name)
        else:
            torch.testing.assert_close(loss.double(), ref_none, rtol=1e-5, atol=1e-7, msg=name)
        dense_loss, dense_grad = runs["dense"]
        torch.testing.assert_close(loss, dense_loss, rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(grad, dense_grad, rtol=1e-5, atol=1e-6 * dense_grad.abs().max().item(), msg=name)


@pytest.mark.parametrize("contrast_mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_dense_and_sync_free_paths_at_moderate_n(variant, contrast_mode, sync_free):
    """N = 2,500: the dense path (one 2,500 x 2,500 block) and the sync-free blocked path with 1,024-row blocks
    against the vectorised float64 reference, with labels and in SimCLR mode."""
    batch, views = 1250, 2
    g = torch.Generator().manual_seed(31)
    features = unit_features(batch, views, 16, seed=32)
    labels = torch.randint(-5, 25, (batch,), generator=g) * 3
    kw = dict(temperature=0.1, variant=variant, contrast_mode=contrast_mode)
    for y in (labels, None):
        ref, ref_grad = loss_and_grad(lambda x, y=y: dense_reference(x, y, **kw), features)
        for path, block_size in (("dense", None), ("blocked", 1024)):
            loss, grad = loss_and_grad(supcon_loss, features.float(), y, path=path, block_size=block_size, **kw)
            torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)
            torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-5 * ref_grad.abs().max().item())


@pytest.mark.parametrize("anchors", [None, torch.tensor([3, 0, 5])], ids=["all", "subset"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_nothing_is_read_back(config, reduction, anchors, sync_free, monkeypatch):
    """On a GPU a value read back makes the host wait for the device: the dense path reads nothing back, nor does
    the blocked path for L_out; blocked L_in reads its column windows, once per call (not per block). Given
    ``anchors`` are validated on the host first (once per call; left out here)."""
    features = unit_features(len(GAPPY), 2, 5, seed=33, dtype=torch.float32)
    labels = GAPPY if config["labels"] else None
    kw = dict(variant=config["variant"], contrast_mode=config["contrast_mode"], reduction=reduction, anchors=anchors)
    if anchors is not None:
        checked = supcon_module._check_anchors(anchors, len(GAPPY), features.device)
        monkeypatch.setattr(supcon_module, "_check_anchors", lambda anchors, batch, device: checked)
    for path in PATHS:
        x = features.clone().requires_grad_(True)
        with HostReads() as reads, ToList() as lists:
            loss = supcon_module.supcon_loss(x, labels, path=path, block_size=4, **kw)
            loss.sum().backward()
        assert reads.seen == [], (path, reads.seen)
        windows = path == "blocked" and config["variant"] == "in"
        assert lists.seen == (["tolist"] if windows else []), (path, lists.seen)


def test_the_automatic_path():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object: no GPU needed to decide
    use_dense = supcon_module._use_dense
    assert not use_dense("auto", None, 4096, 4096, cpu)  # the CPU keeps its cache-sized blocks
    assert use_dense("auto", None, 4096, 4096, cuda)
    assert use_dense("auto", None, 16384, 16384, cuda)  # 1 GiB of logits: the budget
    assert not use_dense("auto", None, 32768, 32768, cuda)
    assert not use_dense("auto", 512, 4096, 4096, cuda)  # a smaller block asked for: bounded memory
    assert use_dense("auto", 4096, 4096, 4096, cuda)
    assert use_dense("dense", 16, 10**6, 10**6, cpu) and not use_dense("blocked", None, 8, 8, cuda)
    features, labels = unit_features(40, 2, 6, seed=34, dtype=torch.float32), torch.arange(40) % 3
    assert SupConLoss().path == "auto" and "path='auto'" in repr(SupConLoss())
    torch.testing.assert_close(SupConLoss(path="dense")(features, labels), supcon_loss(features, labels))


def test_automatic_block_size_off_the_cpu():
    cuda = torch.device("cuda")
    assert _auto_block_size(65536, 65536, cuda) == 2048  # 512 MiB of logits per block
    assert _auto_block_size(262144, 262144, cuda) == 512
    assert _auto_block_size(100, 65536, cuda) == 100
    assert _auto_block_size(65536, 65536) == _auto_block_size(65536, 65536, torch.device("cpu")) == 512


@pytest.mark.parametrize("labels", [torch.tensor([5, -2, 5, 10**12, -2, 0, 7]), torch.tensor([3, 3, 3, 3, 3, 3, 3]),
                                    torch.arange(7, dtype=torch.int8)])
def test_dense_ids_without_unique(labels):
    ids = supcon_module._dense_ids(labels)
    torch.testing.assert_close(ids, torch.unique(labels, return_inverse=True)[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_cuda_paths_do_not_synchronise(config):
    """CUDA's sync debug mode raises on a synchronising call: none in the dense path or blocked L_out; blocked
    L_in reads its windows once per call, before the block loop (checked here by allowing it up front)."""
    features = unit_features(64, 2, 32, seed=35).float().cuda()
    labels = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0)).cuda()
    labels = labels if config["labels"] else None
    kw = dict(variant=config["variant"], contrast_mode=config["contrast_mode"])
    ref = reference_mean(features.double().cpu(), None if labels is None else labels.cpu(), 0.1, **kw)
    for path in PATHS:
        x = features.clone().requires_grad_(True)
        supcon_loss(x, labels, path=path, block_size=16, **kw).backward()  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("default" if path == "blocked" and config["variant"] == "in" else "error")
        try:
            loss = supcon_loss(x, labels, path=path, block_size=16, **kw)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.testing.assert_close(loss.double().cpu(), ref, rtol=1e-5, atol=0)
