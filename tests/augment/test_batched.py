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
from conftest import HostReads, ToList
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from supcon import augment as A
from supcon.augment import ops as O

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


# ---------------------------------------------------------------- the device path, step by step


def random_jitter(n: int, seed: int, jitter_p: float = 0.8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    factors = torch.stack([torch.rand(n, generator=g) * 0.8 + 0.6, torch.rand(n, generator=g) * 0.8 + 0.6,
                           torch.rand(n, generator=g) * 0.8 + 0.6, torch.rand(n, generator=g) * 0.2 - 0.1], 1)
    return {"jitter": torch.rand(n, generator=g) < jitter_p, "order": torch.rand(n, 4, generator=g).argsort(1),
            "factors": factors}


KERNELS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_matches_transforms_v2_in_each_images_order(channels):
    """The four slots give each image its own adjustments in its own order, as ColorJitter's fn_idx does."""
    x = floats(40, channels, 12, 9)
    p = random_jitter(40, seed=11)
    ours = A.color_jitter(x, p["jitter"], p["order"], p["factors"])
    ref = []
    for i in range(40):
        y = x[i]
        if p["jitter"][i]:
            for op in p["order"][i].tolist():
                y = KERNELS[op](y, float(p["factors"][i, op]))
        ref.append(y)
    torch.testing.assert_close(ours, torch.stack(ref), atol=1e-5, rtol=0)
    assert torch.equal(ours[~p["jitter"]], x[~p["jitter"]])  # not jittered: untouched


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", range(4), ids=["brightness", "contrast", "saturation", "hue"])
def test_color_jitter_slots_apply_each_adjustment_alone(op, channels):
    """One adjustment with a real factor, the others neutral, in every slot position: the transforms.v2 kernel."""
    x = floats(24, channels, 10)
    g = torch.Generator().manual_seed(12 + op)
    factors = torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(24, 1)
    factors[:, op] = torch.rand(24, generator=g) - 0.5 if op == 3 else torch.rand(24, generator=g) * 1.6 + 0.2
    order = torch.rand(24, 4, generator=g).argsort(1)
    ours = A.color_jitter(x, torch.ones(24, dtype=torch.bool), order, factors)
    ref = torch.stack([KERNELS[op](x[i], float(factors[i, op])) for i in range(24)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels_at_once", [False, True])
def test_hue_both_ways_matches_transforms_v2(channels_at_once):
    """The hue, a channel at a time (the CPU's way) or the three at once (the GPU's), on grey, saturated and
    random pixels."""
    corners = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0],
                            [0.2, 0.9, 0.9], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]).T.reshape(1, 3, 1, 8)
    for shift in (-0.5, -1 / 3, -0.1, 0.0, 1 / 6, 0.5):
        ours = O._hue(corners, torch.tensor([shift]), channels_at_once=channels_at_once)
        torch.testing.assert_close(ours[0], TF.adjust_hue(corners[0], shift), atol=1e-6, rtol=0)
    x = floats(10, 3, 12, 9)
    factor = torch.rand(10, generator=torch.Generator().manual_seed(13)) - 0.5
    ours = O._hue(x, factor, channels_at_once=channels_at_once)
    ref = torch.stack([TF.adjust_hue(x[i], float(factor[i])) for i in range(10)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_random_grayscale_matches_rgb_to_grayscale(channels):
    x = floats(10, channels, 8)
    mask = torch.arange(10) % 3 == 0
    ours = A.random_grayscale(x, mask)
    ref = torch.stack([TF.rgb_to_grayscale(x[i], channels) if mask[i] else x[i] for i in range(10)])
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    assert torch.equal(ours[~mask], x[~mask])


@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_random_gaussian_blur_is_one_convolution_with_delta_kernels(kernel_size):
    x = floats(8, 3, 16)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.3, 0.7, 1.9], dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, False, True, False, True])
    ours = A.random_gaussian_blur(x, kernel_size, sigma, mask)
    ref = torch.stack([TF.gaussian_blur(x[i], [kernel_size] * 2, [float(s)] * 2) for i, s in enumerate(sigma)])
    torch.testing.assert_close(ours[mask], ref[mask], atol=1e-5, rtol=0)
    assert torch.equal(ours[~mask], x[~mask])  # the delta kernel reproduces the image exactly


def test_resized_crop_takes_any_layout():
    """The rows-major layout the multi-view transform converts to and a plain contiguous batch give one result."""
    x = floats(12, 3, 20, 24)
    boxes = A.sample_crops(12, 20, 24, (0.1, 1.0), generator=torch.Generator().manual_seed(14))
    flip = torch.arange(12) % 3 == 0
    rows_major = x.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(A.resized_crop(x, boxes, 16, flip), A.resized_crop(rows_major, boxes, 16, flip))


@pytest.mark.parametrize("policy", ["crop", "simclr"])
@pytest.mark.parametrize("blur", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_two_paths_give_the_same_views(photos, policy, blur, channels):
    """The device path (slots, where, delta kernels) and the grouped path (images sorted by order, each adjustment
    on its slice) with the same parameters: the same views, to float rounding."""
    x = photos.float() / 255
    x = x if channels == 3 else x[:, :1]
    grouped = A.BatchedView(policy, 40, blur=blur, device_path=False, generator=torch.Generator().manual_seed(15))
    device = A.BatchedView(policy, 40, blur=blur, device_path=True)
    worst = 0.0
    for _ in range(4):
        params = grouped.sample(len(x), channels, 64, 64)
        a, b = grouped.apply(x, params), device.apply(x, params)
        worst = max(worst, (a - b).abs().max().item())
    assert worst <= 1e-6


def test_the_device_path_reads_nothing_back(photos):
    """No value read back and no data-dependent shape: on a GPU the host never waits for the device."""
    views = A.multiview_transform("simclr", 48, views=2, first_view="crop", batched=True, blur=True,
                                  mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    for t in views.transforms:
        t.device_path = True
    views(photos)  # the first call makes the normalisation's constants, once per device
    with HostReads() as reads, ToList() as lists:
        out = views(photos)
    assert reads.seen == [] and lists.seen == []
    assert out.shape == (len(photos), 2, 3, 48, 48)
    with HostReads() as reads, ToList() as lists:  # the grouped path does read back: the probe sees it
        views.transforms[1].device_path = False
        views(photos)
    assert reads.seen and lists.seen


def test_views_with_one_setting_are_drawn_as_one_stacked_batch(photos):
    """Two simclr views on the device path: one draw of 2B images (each image's two views differ); the crop view
    of first_view="crop" keeps its own draw; seeded, it repeats."""
    views = A.multiview_transform("simclr", 32, views=3, first_view="crop", batched=True)
    for t in views.transforms:
        t.device_path = True
    assert views._groups(torch.device("cpu")) == [[0], [1, 2]]
    torch.manual_seed(16)
    a = views(photos)
    torch.manual_seed(16)
    assert torch.equal(a, views(photos))
    assert len({v.numpy().tobytes() for v in a.flatten(0, 1)}) == 3 * len(photos)
    views.transforms[1].device_path = False  # the grouped path takes one view at a time
    assert views._groups(torch.device("cpu")) == [[0], [1], [2]]


def test_generators_are_per_device():
    x = uint8(4, 3, 16, seed=3)
    cpu = A.BatchedView("simclr", 16, generator=[torch.Generator().manual_seed(9)])
    again = A.BatchedView("simclr", 16, generator=torch.Generator().manual_seed(9))
    assert torch.equal(cpu(x), again(x))
    with pytest.raises(ValueError, match="none on cuda"):
        cpu.generator_for("cuda")
    assert A.BatchedView("crop", 16).generator_for("cpu") is None  # torch's default generator of the device


@needs_cuda
def test_on_cuda_nothing_synchronises_and_the_views_match_the_cpu(photos):
    """On a GPU: parameters drawn there, no synchronisation (CUDA's sync debug mode raises on one), and the same
    views as the CPU's grouped path with the same parameters."""
    torch.cuda.manual_seed(17)
    views = A.multiview_transform("simclr", 48, views=2, batched=True, blur=True, mean=[0.5] * 3, std=[0.25] * 3)
    x = photos.cuda()
    views(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = views(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == "cuda" and out.shape == (len(photos), 2, 3, 48, 48)
    view = A.BatchedView("simclr", 48, blur=True)
    params = view.sample(len(x), 3, 64, 64, device="cuda")
    on_gpu = view.apply(x.float() / 255, params).cpu()
    on_cpu = A.BatchedView("simclr", 48, blur=True, device_path=False).apply(
        photos.float() / 255, {k: v.cpu() for k, v in params.items()})
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-5, rtol=0)


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


def view_statistics(views: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per view: brightness, contrast, colourfulness, left-right balance (flips) and sharpness (blur)."""
    chroma = views.amax(1) - views.amin(1)
    half = views.shape[-1] // 2
    return {"mean": views.mean((1, 2, 3)), "std": views.std((1, 2, 3)), "chroma": chroma.mean((1, 2)),
            "left-right": views[..., :half].mean((1, 2, 3)) - views[..., half:].mean((1, 2, 3)),
            "sharpness": (views[..., 1:] - views[..., :-1]).abs().mean((1, 2, 3))}


def test_views_have_the_distribution_of_transforms_v2(photos):
    """The views themselves, not only the parameters: many views of a few photos by both batched paths and by the
    per-image transforms.v2 pipeline (on float images, so that neither rounds), compared statistic by statistic
    with two-sample Kolmogorov-Smirnov tests."""
    from scipy.stats import ks_2samp

    copies, size = 80, 32
    x = photos[:6].repeat(copies, 1, 1, 1)
    per_image = A.policy_transform("simclr", size, blur=True)
    torch.manual_seed(18)
    theirs = view_statistics(torch.stack([per_image(image) for image in x.float() / 255]))
    for device_path in PATHS.values():
        torch.manual_seed(19)
        ours = view_statistics(A.apply_batch(A.BatchedView("simclr", size, blur=True, device_path=device_path), x))
        for name in ours:
            p = ks_2samp(ours[name].numpy(), theirs[name].numpy()).pvalue
            assert p > 1e-3, f"device_path={device_path}, {name}: KS p = {p:.1e}"
        grey = (ours["chroma"] < 1e-6).float().mean().item()  # grayscale p=0.2; no other step makes grey
        assert abs(grey - (theirs["chroma"] < 1e-6).float().mean().item()) < 0.06


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
