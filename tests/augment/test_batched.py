"""Tests for the batched augmentation (supcon.augment.BatchedView / BatchedMultiView): each step of both paths (the
grouped one, the CPU default, and the device path, which never reads back to the host) against the transforms.v2
kernel it replaces, with per-image parameters; the two paths against each other; the parameter and view
distributions against transforms.v2's; identity at neutral parameters; that the device path reads nothing back;
shapes, ranges, seeding, generators and the fallbacks. The device path runs on the CPU here, on CUDA too where
there is one."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from supcon import augment as A
from supcon.augment import batched as B

NPZ = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "imagenet5_64.npz"
PATHS = {"grouped": False, "device": True}  # BatchedView(device_path=...)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def floats(n: int, channels: int, height: int, width: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, height, width or height, generator=g)


def uint8(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Twelve real 64x64 photos (ImageNet-5) when the shared data is there, else random pixels."""
    if not NPZ.is_file():
        return uint8(12, 3, 64)
    with np.load(NPZ) as d:
        x = d["x_train"][:12]
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# ---------------------------------------------------------------- each step against transforms.v2


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_colour_adjustments_match_transforms_v2_per_image(name, channels):
    x = floats(10, channels, 12, 9)
    g = torch.Generator().manual_seed(1)
    factor = torch.rand(10, generator=g) - 0.5 if name == "hue" else torch.rand(10, generator=g) * 1.6 + 0.2
    ours = getattr(A, f"adjust_{name}")(x, factor)
    ref = torch.stack([getattr(TF, f"adjust_{name}")(x[i], float(factor[i])) for i in range(10)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(x, floats(10, channels, 12, 9))  # the public functions leave their input alone


def test_hue_of_grey_and_saturated_pixels():
    x = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0],
                      [0.2, 0.9, 0.9], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]).T.reshape(1, 3, 1, 8)
    for shift in (-0.5, -1 / 3, -0.1, 0.0, 1 / 6, 0.5):
        ref = TF.adjust_hue(x[0], shift)
        torch.testing.assert_close(A.adjust_hue(x, torch.tensor([shift]))[0], ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("height, width, size", [(20, 24, 16), (16, 16, 16), (20, 24, 40), (64, 64, 8)])
def test_resized_crop_matches_transforms_v2(channels, height, width, size):
    x = floats(12, channels, height, width)
    boxes = A.sample_crops(12, height, width, (0.05, 1.0), generator=torch.Generator().manual_seed(2))
    flip = torch.arange(12) % 2 == 0
    ours = A.resized_crop(x, boxes, size, flip)
    ref = torch.stack([TF.resized_crop(x[i], *boxes[i].tolist(), [size, size], antialias=True) for i in range(12)])
    ref = torch.where(flip[:, None, None, None], ref.flip(-1), ref)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_gaussian_blur_matches_transforms_v2():
    x = floats(6, 3, 16)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.3], dtype=torch.float64)
    ours = A.gaussian_blur(x, 5, sigma)
    ref = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(s)] * 2) for i, s in enumerate(sigma)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("blur", [False, True])
def test_whole_policy_matches_transforms_v2_with_the_same_parameters(photos, blur, path):
    """Every step, in its per-image random order, against the transforms.v2 kernels applied one image at a
    time with the same parameters (in float; the uint8 pipeline would also round after each step)."""
    view = A.BatchedView("simclr", 48, blur=blur, generator=torch.Generator().manual_seed(3),
                         device_path=PATHS[path])
    x = photos.float() / 255
    params = view.sample(len(x), 3, 64, 64)
    ours = view.apply(x, params)
    kernels = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    ref = []
    for i in range(len(x)):
        y = TF.resized_crop(x[i], *params["boxes"][i].tolist(), [48, 48], antialias=True)
        y = y.flip(-1) if params["flip"][i] else y
        if params["jitter"][i]:
            for op in params["order"][i].tolist():
                y = kernels[op](y, float(params["factors"][i, op]))
        y = TF.rgb_to_grayscale(y, 3) if params["grayscale"][i] else y
        if blur and params["blur"][i]:
            y = TF.gaussian_blur(y, [A.blur_kernel_size(48)] * 2, [float(params["sigma"][i])] * 2)
        ref.append(y)
    torch.testing.assert_close(ours, torch.stack(ref), atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", PATHS)
def test_neutral_parameters_are_the_identity(photos, path):
    view = A.BatchedView("simclr", 64, blur=True, device_path=PATHS[path])
    n = len(photos)
    params = {"boxes": torch.tensor([[0, 0, 64, 64]] * n), "flip": torch.zeros(n, dtype=torch.bool),
              "jitter": torch.ones(n, dtype=torch.bool), "order": torch.arange(4).repeat(n, 1),
              "factors": torch.tensor([[1.0, 1.0, 1.0, 0.0]] * n), "grayscale": torch.zeros(n, dtype=torch.bool),
              "blur": torch.zeros(n, dtype=torch.bool), "sigma": torch.ones(n, dtype=torch.float64)}
    x = photos.float() / 255
    torch.testing.assert_close(view.apply(x, params), x, atol=1e-6, rtol=0)
    none = A.view_transform("none", 64, batched=True)
    assert torch.equal(A.apply_batch(none, photos), A.to_float()(photos))  # the per-image scaling, bit for bit


# ---------------------------------------------------------------- parameter distributions


@pytest.mark.parametrize("device", DEVICES)
def test_crop_boxes_follow_random_resized_crop(device):
    g = torch.Generator(device).manual_seed(4)
    n, scale = 4000, (0.2, 1.0)
    boxes = A.sample_crops(n, 64, 64, scale, generator=g)
    assert boxes.device.type == device
    boxes = boxes.cpu().double()
    top, left, h, w = boxes.unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 64) & (left + w <= 64) & (h > 0) & (w > 0)).all())
    share = h * w / 64**2
    # w and h are rounded, so the share can fall a little below scale[0], as in transforms.v2
    assert share.min() >= scale[0] * 0.93 and share.max() <= 1.0
    aspect = w / h
    assert aspect.min() >= 0.75 * 0.9 and aspect.max() <= 4 / 3 * 1.1
    torch.manual_seed(5)
    rrc = v2.RandomResizedCrop(64, scale=scale)
    ref = torch.tensor([[p["top"], p["left"], p["height"], p["width"]]
                        for p in (rrc.make_params([torch.zeros(3, 64, 64)]) for _ in range(n))]).double()
    ref_share = ref[:, 2] * ref[:, 3] / 64**2
    assert abs(share.mean() - ref_share.mean()) < 0.02 and abs(share.std() - ref_share.std()) < 0.02
    assert abs(aspect.log().mean() - (ref[:, 3] / ref[:, 2]).log().mean()) < 0.02
    # boxes are placed uniformly: the mean offset is half the slack
    assert abs(((top + 0.5) / (65 - h)).mean() - 0.5) < 0.02 and abs(((left + 0.5) / (65 - w)).mean() - 0.5) < 0.02


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("height, width", [(4, 64), (64, 4), (2, 2)])
def test_crop_fallback_is_the_centred_box_of_transforms_v2(height, width, device):
    ours = A.sample_crops(300, height, width, (0.9, 1.0), generator=torch.Generator(device).manual_seed(6)).cpu()
    rrc = v2.RandomResizedCrop(8, scale=(0.9, 1.0))
    torch.manual_seed(0)
    ref = {tuple(p[k] for k in ("top", "left", "height", "width"))
           for p in (rrc.make_params([torch.zeros(1, height, width)]) for _ in range(300))}
    assert {tuple(b) for b in ours.tolist()} <= ref | {(0, 0, height, width)}


@pytest.mark.parametrize("device", DEVICES)
def test_per_image_parameters_are_independent_and_have_the_policy_probabilities(device):
    n = 6000
    view = A.BatchedView("simclr", 32, blur=True, generator=torch.Generator(device).manual_seed(7))
    p = view.sample(n, 3, 32, 32, device=device)
    assert {v.device.type for v in p.values()} == {device}  # drawn where the images are
    p = {k: v.cpu() for k, v in p.items()}

    def near(mask, prob):  # within 5 binomial standard deviations
        return abs(mask.float().mean().item() - prob) < 5 * math.sqrt(prob * (1 - prob) / n)

    assert near(p["flip"], 0.5) and near(p["jitter"], A.JITTER_P) and near(p["grayscale"], A.GRAYSCALE_P)
    assert near(p["blur"], A.BLUR_P)
    assert not near(p["flip"] & p["grayscale"], 0.5 * 0.5)  # not one draw reused
    b, c, s, h = A.JITTER
    f = p["factors"]
    for k, (low, high) in enumerate([(1 - b, 1 + b), (1 - c, 1 + c), (1 - s, 1 + s), (-h, h)]):
        assert low <= f[:, k].min() and f[:, k].max() <= high
        assert abs(f[:, k].mean() - (low + high) / 2) < 0.01 * (high - low) * 3
    assert torch.equal(p["order"].sort(1).values, torch.arange(4).expand(n, 4))  # permutations...
    assert len({tuple(o) for o in p["order"].tolist()}) == 24  # ...all 24 of them
    assert (p["sigma"].min() >= A.BLUR_SIGMA[0]) and (p["sigma"].max() <= A.BLUR_SIGMA[1])
    assert len({tuple(box) for box in p["boxes"].tolist()}) > 100


def test_each_copy_of_an_image_gets_its_own_view(photos):
    x = photos[:1].expand(16, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    out = A.apply_batch(A.multiview_transform("simclr", 64, views=2, batched=True), x).flatten(0, 1)
    assert len({o.numpy().tobytes() for o in out}) == 32


# ---------------------------------------------------------------- interface


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("policy", A.BATCHED_POLICIES)
def test_shapes_dtype_range(policy, channels):
    torch.manual_seed(0)
    x = uint8(5, channels, 16)
    single = A.apply_batch(A.view_transform(policy, 16, batched=True, blur=True), x)
    assert single.shape == (5, channels, 16, 16) and single.dtype == torch.float32
    multi = A.apply_batch(A.multiview_transform(policy, 16, views=3, batched=True, blur=True), x)
    assert multi.shape == (5, 3, channels, 16, 16) and multi.dtype == torch.float32
    assert multi.is_contiguous() and multi.min() >= 0 and multi.max() <= 1
    views = A.multiview_transform(policy, 16, views=2, batched=True)(x[0])  # one image: a list, as per image
    assert isinstance(views, list) and len(views) == 2 and views[0].shape == (channels, 16, 16)


def test_normalisation_and_first_view_crop(photos):
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    torch.manual_seed(0)
    mv = A.multiview_transform("simclr", 64, views=2, first_view="crop", batched=True, mean=mean, std=std)
    assert [t.policy for t in mv.transforms] == ["crop", "simclr"]
    out = A.apply_batch(mv, photos)
    raw = out * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    none = A.apply_batch(A.view_transform("none", 64, batched=True, mean=mean, std=std), photos)
    torch.testing.assert_close(none, A.apply_batch(A.view_transform("none", 64, mean=mean, std=std), photos))


def test_seeding_and_generator():
    x = uint8(4, 3, 16, seed=3)
    mv = A.multiview_transform("simclr", 16, views=2, batched=True, blur=True)
    torch.manual_seed(1)
    a = A.apply_batch(mv, x)
    torch.manual_seed(1)
    assert torch.equal(a, A.apply_batch(mv, x))
    assert not torch.equal(a, A.apply_batch(mv, x))
    g = A.BatchedView("crop", 16, generator=torch.Generator().manual_seed(9))
    h = A.BatchedView("crop", 16, generator=torch.Generator().manual_seed(9))
    assert torch.equal(g(x), h(x))


def test_policies_without_a_batched_form_fall_back_to_transforms_v2():
    assert isinstance(A.multiview_transform("randaugment", 16, batched=True), A.MultiViewTransform)
    assert isinstance(A.view_transform("autoaugment", 16, batched=True), v2.Compose)
    with pytest.raises(ValueError, match="batched augmentation supports"):
        A.BatchedView("autoaugment", 16)
    with pytest.raises(ValueError, match="augmentation policy must be one of"):
        A.multiview_transform("mixup", 16, batched=True)


def test_the_thread_count_is_restored():
    before = torch.get_num_threads()
    A.apply_batch(A.multiview_transform("simclr", 16, batched=True), uint8(3, 3, 16))
    assert torch.get_num_threads() == before
