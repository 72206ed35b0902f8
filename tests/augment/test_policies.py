"""Tests for supcon.augment: every policy on 1- and 3-channel uint8 images (synthetic, digits, ImageNet-5),
the multi-view transform, per-image randomness in apply_batch, seeding, normalisation and the errors. The
statistical and randomness tests run on the per-image transforms.v2 pipeline and on both batched paths (the
grouped one and the device path, run on the CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from supcon.augment import (
    POLICIES,
    BatchedMultiView,
    BatchedView,
    MultiViewTransform,
    apply_batch,
    multiview_transform,
    policy_transform,
    to_float,
    view_transform,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NPZ = SHARED / "imagenet5_64.npz"
needs_npz = pytest.mark.skipif(not NPZ.is_file(), reason=f"real data set not found at {NPZ}")

SIZE = 16  # synthetic images are made at the policy's size, as the pipeline does


def synthetic(channels: int, size: int = SIZE, n: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (channels, size, size) if n is None else (n, channels, size, size)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def eight_digits() -> torch.Tensor:
    """Eight real 8x8 digits, scaled from 0..16 to uint8 0..255, shaped [8, 1, 8, 8]."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:8]  # float64 in 0..16
    x = np.round(images / 16.0 * 255.0).astype(np.uint8)
    return torch.from_numpy(x).unsqueeze(1)


@pytest.fixture(scope="module")
def imagenet() -> torch.Tensor:
    """Six real 64x64 RGB images from ImageNet-5 (two classes), shaped [6, 3, 64, 64] uint8."""
    if not NPZ.is_file():
        pytest.skip(f"real data set not found at {NPZ}")
    with np.load(NPZ) as d:
        x, y = d["x_train"], d["y_train"]
    idx = np.concatenate([np.flatnonzero(y == 0)[:3], np.flatnonzero(y == 2)[:3]])
    return torch.from_numpy(np.ascontiguousarray(x[idx].transpose(0, 3, 1, 2)))


IMPLEMENTATIONS = ["per-image", "batched", "batched-device"]


def implemented(transform, implementation: str):
    """``transform`` with its batched views set to the device path for ``batched-device``."""
    if implementation == "batched-device":
        views = transform.transforms if isinstance(transform, BatchedMultiView) else [transform]
        for view in views:
            if isinstance(view, BatchedView):
                view.device_path = True
    return transform


def views_of(policy: str, size: int, views: int = 2, implementation: str = "per-image", **options):
    """:func:`multiview_transform` in one of the three implementations (a policy without a batched form falls back
    to per image)."""
    mv = multiview_transform(policy, size, views, batched=implementation != "per-image", **options)
    return implemented(mv, implementation)


def view_of(policy: str, size: int, implementation: str = "per-image", **options):
    """:func:`view_transform` in one of the three implementations."""
    return implemented(view_transform(policy, size, batched=implementation != "per-image", **options), implementation)


def leaf_transforms(t) -> list:
    """The leaves of nested Compose / RandomApply, in order."""
    if isinstance(t, v2.Compose | v2.RandomApply):
        return [leaf for inner in t.transforms for leaf in leaf_transforms(inner)]
    return [t]


# ---------------------------------------------------------------- single view, every policy


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("policy", POLICIES)
def test_view_transform_shape_dtype_range(policy, channels):
    torch.manual_seed(0)
    t = view_transform(policy, SIZE, blur=True)
    for seed in range(5):
        out = t(synthetic(channels, seed=seed))
        assert out.shape == (channels, SIZE, SIZE)
        assert out.dtype == torch.float32
        assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("policy", POLICIES)
def test_policy_transform_keeps_uint8(policy, channels):
    torch.manual_seed(0)
    t = policy_transform(policy, SIZE, blur=True)
    for seed in range(5):
        out = t(synthetic(channels, seed=seed))
        assert out.dtype == torch.uint8
        assert out.shape == (channels, SIZE, SIZE)


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "none"])
def test_policies_resize_larger_images_to_image_size(policy):
    torch.manual_seed(0)
    out = view_transform(policy, 24)(synthetic(3, size=40))
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32


@pytest.mark.parametrize("policy", POLICIES)
def test_real_digits_every_policy(eight_digits, policy):
    torch.manual_seed(0)
    out = apply_batch(view_transform(policy, 8), eight_digits)
    assert out.shape == (8, 1, 8, 8) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


@needs_npz
@pytest.mark.parametrize("policy", POLICIES)
def test_real_imagenet_every_policy(imagenet, policy):
    torch.manual_seed(0)
    out = apply_batch(multiview_transform(policy, 64, views=2, blur=True), imagenet)
    assert out.shape == (6, 2, 3, 64, 64) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    if policy != "none":  # two views of a real photo are not the same picture
        assert not torch.equal(out[:, 0], out[:, 1])


# ---------------------------------------------------------------- none, normalisation


@pytest.mark.parametrize("channels", [1, 3])
def test_none_is_deterministic_and_scales(channels):
    x = synthetic(channels)
    t = view_transform("none", SIZE)
    a, b = t(x), t(x)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, x.float() / 255.0)
    assert torch.equal(policy_transform("none", SIZE)(x), x)


def test_none_on_real_digits_is_x_over_255(eight_digits):
    out = apply_batch(view_transform("none", 8), eight_digits)
    torch.testing.assert_close(out, eight_digits.float() / 255.0)
    assert out.max() == 1.0 and out.min() == 0.0  # the digits use the full 0..16 range


def test_normalisation_single_channel(eight_digits):
    out = apply_batch(view_transform("none", 8, mean=[0.5], std=[0.25]), eight_digits)
    torch.testing.assert_close(out, (eight_digits.float() / 255.0 - 0.5) / 0.25)
    assert out.min() == -2.0 and out.max() == 2.0


def test_normalisation_per_channel():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = synthetic(3)
    out = view_transform("none", SIZE, mean=mean, std=std)(x)
    expected = (x.float() / 255.0 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(out, expected)
    # a constant image lands exactly where the formula says
    grey = torch.full((3, 4, 4), 255, dtype=torch.uint8)
    got = to_float(mean, std)(grey)[:, 0, 0]
    torch.testing.assert_close(got, (1.0 - torch.tensor(mean)) / torch.tensor(std))


def test_normalisation_in_multiview():
    x = synthetic(3, n=2)
    views = apply_batch(multiview_transform("none", SIZE, views=2, mean=[0.5] * 3, std=[0.5] * 3), x)
    torch.testing.assert_close(views, (x.float() / 255.0 * 2.0 - 1.0).unsqueeze(1).expand(-1, 2, -1, -1, -1))


# ---------------------------------------------------------------- multi-view


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("views", [1, 2, 4])
@pytest.mark.parametrize("policy", POLICIES)
def test_multiview_returns_v_views(policy, views, channels):
    torch.manual_seed(0)
    mv = multiview_transform(policy, SIZE, views=views)
    assert isinstance(mv, MultiViewTransform) and len(mv) == views
    out = mv(synthetic(channels))
    assert isinstance(out, list) and len(out) == views
    for v in out:
        assert v.shape == (channels, SIZE, SIZE) and v.dtype == torch.float32


def test_first_view_crop_structure():
    mv = multiview_transform("simclr", SIZE, views=3, first_view="crop")
    first = {type(t) for t in leaf_transforms(mv.transforms[0])}
    assert first == {v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.ToDtype}
    for t in mv.transforms[1:]:
        kinds = {type(leaf) for leaf in leaf_transforms(t)}
        assert {v2.ColorJitter, v2.RandomGrayscale} <= kinds
    same = multiview_transform("simclr", SIZE, views=3, first_view="same")
    assert v2.ColorJitter in {type(leaf) for leaf in leaf_transforms(same.transforms[0])}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("policy", ["simclr", "autoaugment", "randaugment"])
def test_first_view_crop_keeps_colour(policy, implementation):
    # Crop, resize and flip cannot change the colour of a uniformly coloured image; the colour policies do.
    colour = torch.tensor([200, 40, 90], dtype=torch.uint8).view(3, 1, 1)
    x = colour.expand(3, SIZE, SIZE).contiguous()
    torch.manual_seed(0)
    mv = views_of(policy, SIZE, 2, implementation, first_view="crop")
    changed = 0
    for _ in range(30):
        v0, v1 = mv(x)
        torch.testing.assert_close(v0, x.float() / 255.0)
        changed += int(not torch.allclose(v1, x.float() / 255.0))
    assert changed >= 5


@needs_npz
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_first_view_crop_keeps_colour_statistics_of_real_images(imagenet, implementation):
    # Over many views, the crop-only view keeps each image's channel means close to the original's, while
    # SimCLR's jitter and grayscale move them.
    torch.manual_seed(0)
    mv = views_of("simclr", 64, 2, implementation, first_view="crop")
    orig = imagenet.float().div(255.0).mean(dim=(2, 3))  # [6, 3]
    crop_dev, simclr_dev = [], []
    for _ in range(4):
        out = apply_batch(mv, imagenet).mean(dim=(3, 4))  # [6, 2, 3]
        crop_dev.append((out[:, 0] - orig).abs().mean())
        simclr_dev.append((out[:, 1] - orig).abs().mean())
    assert torch.stack(crop_dev).mean() < 0.5 * torch.stack(simclr_dev).mean()


# ---------------------------------------------------------------- apply_batch


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("policy", POLICIES)
def test_apply_batch_shapes(policy, channels):
    torch.manual_seed(0)
    x = synthetic(channels, n=3)
    single = apply_batch(view_transform(policy, SIZE), x)
    assert single.shape == (3, channels, SIZE, SIZE) and single.dtype == torch.float32
    multi = apply_batch(multiview_transform(policy, SIZE, views=2), x)
    assert multi.shape == (3, 2, channels, SIZE, SIZE) and multi.dtype == torch.float32
    uint8 = apply_batch(policy_transform(policy, SIZE), x)
    assert uint8.shape == (3, channels, SIZE, SIZE) and uint8.dtype == torch.uint8


@needs_npz
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_apply_batch_draws_params_per_image(imagenet, implementation):
    # The same photo four times in one batch: each copy gets its own crop.
    x = imagenet[:1].expand(4, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    out = apply_batch(view_of("crop", 64, implementation), x)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(out[i], out[j]), (i, j)
    # and so does each view of each copy
    torch.manual_seed(1)
    multi = apply_batch(views_of("crop", 64, 2, implementation), x).flatten(0, 1)
    assert len({m.numpy().tobytes() for m in multi}) == 8


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_apply_batch_draws_params_per_image_digits(eight_digits, implementation):
    x = eight_digits[3:4].expand(6, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    out = apply_batch(view_of("crop", 8, implementation, crop_scale=0.2), x)
    assert len({o.numpy().tobytes() for o in out}) >= 5


def test_apply_batch_none_equals_x_over_255():
    x = synthetic(3, n=4)
    torch.testing.assert_close(apply_batch(view_transform("none", SIZE), x), x.float() / 255.0)


# ---------------------------------------------------------------- seeding


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("policy", POLICIES)
def test_seed_makes_augmentation_reproducible(policy, implementation):
    x = synthetic(3, n=4, seed=3)
    mv = views_of(policy, SIZE, 2, implementation, blur=True)
    torch.manual_seed(123)
    a = apply_batch(mv, x)
    torch.manual_seed(123)
    b = apply_batch(mv, x)
    assert torch.equal(a, b)
    if policy != "none":
        torch.manual_seed(124)
        assert not torch.equal(a, apply_batch(mv, x))


@needs_npz
def test_seed_reproducible_on_real_images(imagenet):
    mv = multiview_transform("randaugment", 64, views=2, first_view="crop")
    torch.manual_seed(7)
    a = apply_batch(mv, imagenet)
    torch.manual_seed(7)
    assert torch.equal(a, apply_batch(mv, imagenet))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("make", [
    lambda: policy_transform("mixup", SIZE),
    lambda: view_transform("SimCLR", SIZE),
    lambda: multiview_transform("rand", SIZE),
])
def test_unknown_policy(make):
    with pytest.raises(ValueError, match="augmentation policy must be one of none, crop, simclr"):
        make()


@pytest.mark.parametrize("views", [0, -1])
def test_views_must_be_positive(views):
    with pytest.raises(ValueError, match="views must be at least 1"):
        multiview_transform("crop", SIZE, views=views)


def test_empty_multiview_transform():
    with pytest.raises(ValueError, match="at least one view"):
        MultiViewTransform([])


@pytest.mark.parametrize("first_view", ["simclr", "CROP", ""])
def test_bad_first_view(first_view):
    with pytest.raises(ValueError, match="first_view must be 'same' or 'crop'"):
        multiview_transform("simclr", SIZE, first_view=first_view)


@pytest.mark.parametrize("images", [
    torch.rand(2, 3, SIZE, SIZE),                                   # float, not uint8
    torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.int64),   # integer but not uint8
    torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8),      # a single image, rank 3
    torch.randint(0, 256, (1, 2, 3, SIZE, SIZE), dtype=torch.uint8),  # rank 5
])
def test_apply_batch_rejects_bad_batches(images):
    with pytest.raises(ValueError, match=r"uint8 batch shaped \[B, C, H, W\]"):
        apply_batch(view_transform("crop", SIZE), images)
