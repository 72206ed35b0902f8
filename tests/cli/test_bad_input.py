"""Bad input, fuzzed: every corrupt, truncated, empty, odd-format or mislabelled input either gets a one-line
error naming what was expected, or is skipped and counted with its reason; nothing raises a traceback and nothing
trains on garbage.

Real photos (ImageNet-5 at 64 px from ../shared/data, else scikit-learn's digits) are encoded, then cut, flipped
and mangled with a seeded generator, so every run sees the same bytes.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from supcon.cli import main
from supcon.config import Config
from supcon.data import load_dataset

SHARED_NPZ = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "imagenet5_64.npz"
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Eight uint8 RGB photos [8, 64, 64, 3] with texture enough for realistic JPEG and PNG streams."""
    if SHARED_NPZ.is_file():
        with np.load(SHARED_NPZ) as z:
            return np.ascontiguousarray(z["x_train"][:8])
    from sklearn.datasets import load_digits

    digits = load_digits().images[:8] / 16.0  # [8, 8, 8] in 0..1
    big = np.kron(digits, np.ones((8, 8)))[..., None] * np.array([255, 180, 90])
    return big.round().astype(np.uint8)


def encode(image: np.ndarray | Image.Image, fmt: str, **kwargs) -> bytes:
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))


def load_quietly(spec: str, **kwargs):
    """load_dataset, returning (splits, the one-line warnings it gave)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_dataset(spec, **kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert all("\n" not in m for m in messages), messages
    return splits, messages


def one_line_error(call, *fragments: str) -> str:
    with pytest.raises(ValueError) as err:
        call()
    text = str(err.value)
    assert "\n" not in text and text.strip(), text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    return text


def train_val_tree(root: Path, photos: np.ndarray) -> None:
    """root/train/{a,b} with 2 good PNGs each, root/val/{a,b} and root/test/{a,b} with 1: every file's split is
    fixed, no sampling. (The test images are mirrored photos, so that photos[3] and photos[7] stay out.)"""
    for c, offset in (("a", 0), ("b", 4)):
        for split, idx in (("train", (0, 1)), ("val", (2,)), ("test", (2,))):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in idx:
                pixels = photos[offset + i] if split != "test" else np.ascontiguousarray(photos[offset + i][:, ::-1])
                Image.fromarray(pixels).save(root / split / c / f"good{i}.png")


def class_images(splits, split: str, name: str) -> torch.Tensor:
    ds = getattr(splits, split)
    return ds.images[ds.labels == ds.class_names.index(name)]


# ---------------------------------------------------------------- truncated and corrupt image files


def test_truncated_jpeg_and_png_are_skipped_at_every_cut(tmp_path, photos):
    """A file cut anywhere is skipped as truncated (or not an image, if the header is gone); the one exception
    is a PNG cut after its pixel data (only the IEND trailer lost), which decodes to the full image."""
    train_val_tree(tmp_path, photos)
    bad = tmp_path / "train" / "b"
    sources = {"jpg": encode(photos[7], "JPEG", quality=90), "png": encode(photos[7], "PNG"),
               "progressive.jpg": encode(photos[7], "JPEG", progressive=True)}  # photos[7] is not in the tree
    cut_files = {}
    for ext, data in sources.items():
        n = len(data)
        # every byte of the header and of the trailer, and a spread through the compressed stream
        cuts = sorted({*range(1, 40), *range(40, n - 40, max(1, (n - 80) // 40)), *range(n - 40, n)})
        for cut in cuts:
            name = f"cut{cut:05d}.{ext}"
            (bad / name).write_bytes(data[:cut])
            cut_files[name] = (ext, cut, n)
    splits, messages = load_quietly(f"folder:{tmp_path}")

    skipped = {Path(p).name: why for p, why in splits.skipped}
    assert set(skipped) <= set(cut_files)
    for why in skipped.values():
        assert why.startswith(("truncated file", "not a recognised image format", "corrupt or unsupported")), why
    survivors = [name for name in cut_files if name not in skipped]
    for name in survivors:
        ext, cut, n = cut_files[name]
        assert ext == "png" and cut >= n - 32, f"{name} of {n} bytes was not detected as truncated"
    # the survivors are exactly the full image, never a grey-padded partial one
    loaded_b = class_images(splits, "train", "b")
    assert len(loaded_b) == 2 + len(survivors)
    full = torch.from_numpy(decoded(sources["png"])).permute(2, 0, 1)
    assert sum(torch.equal(img, full) for img in loaded_b) == len(survivors)
    assert any(ext == "jpg" for ext, _, _ in cut_files.values()) and survivors  # both paths were exercised
    assert len(messages) == 1 and messages[0].startswith(f"skipped {len(skipped)} unreadable image file(s) (")


def test_random_byte_flips_never_crash_and_every_file_is_counted(tmp_path, photos):
    """200 seeded corruptions of six formats: each file is loaded as a 3×32×32 uint8 image or skipped with a
    one-line reason; loaded + skipped = files written."""
    rng = np.random.default_rng(1234)
    train_val_tree(tmp_path, photos)
    bad = tmp_path / "train" / "a"
    formats = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP", "tif": "TIFF"}
    written = 0
    for ext, fmt in formats.items():
        data = np.frombuffer(encode(photos[rng.integers(0, 8)], fmt), np.uint8)
        for trial in range(34):
            corrupt = data.copy()
            k = int(rng.integers(1, 8))
            corrupt[rng.integers(0, len(corrupt), k)] = rng.integers(0, 256, k, dtype=np.uint8)
            (bad / f"flip{trial:02d}.{ext}").write_bytes(corrupt.tobytes())
            written += 1
    # pure noise, with and without a valid magic number in front
    for i, magic in enumerate((b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM")):
        (bad / f"noise{i}.jpg").write_bytes(magic + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
        written += 1
    splits, messages = load_quietly(f"folder:{tmp_path}", image_size=32)

    loaded_a = len(class_images(splits, "train", "a")) - 2
    assert loaded_a + len(splits.skipped) == written
    assert splits.train.images.shape[1:] == (3, 32, 32) and splits.train.images.dtype == torch.uint8
    reasons = dict(splits.skipped)
    assert all(why and "\n" not in why for why in reasons.values())
    for i in range(5):
        assert str(bad / f"noise{i}.jpg") in reasons
    assert reasons[str(bad / "noise0.jpg")].startswith("not a recognised image format")
    assert len(splits.skipped) > 50  # most flips break PNG's checksums and the other formats' headers
    # Pillow's anonymous per-file warnings (bad TIFF tags, corrupt EXIF) arrive as one line, then the count
    assert len(messages) == 2 and messages[1].startswith(f"skipped {len(splits.skipped)} unreadable image file(s)")
    assert " decoder warning(s) while reading images in " in messages[0]


def test_empty_and_non_image_files_are_skipped_with_their_reason(tmp_path, photos):
    train_val_tree(tmp_path, photos)
    b = tmp_path / "train" / "b"
    (b / "empty.jpg").write_bytes(b"")
    (b / "empty.png").write_bytes(b"")
    (b / "notes.txt").write_text("these are cats")
    (b / "labels.csv").write_text("file,label\ngood0.png,b\n")
    (b / "noextension").write_bytes(b"\x00\x01\x02garbage")
    (b / ".DS_Store").write_bytes(b"\x00junk")  # hidden files are not images of anyone's: ignored, not counted
    (b / ".thumbs").mkdir()
    Image.fromarray(photos[0]).save(b / ".thumbs" / "hidden.png")
    splits, messages = load_quietly(f"folder:{tmp_path}")
    reasons = {Path(p).name: why for p, why in splits.skipped}
    assert reasons == {
        "empty.jpg": "empty file",
        "empty.png": "empty file",
        "notes.txt": "not an image (.txt file)",
        "labels.csv": "not an image (.csv file)",
        "noextension": "not a recognised image format (corrupt header or unsupported type)",
    }
    assert len(splits.train) == 4 and len(splits.val) == 2
    assert messages == [f"skipped 5 unreadable image file(s) (2 empty, 3 not images) in {tmp_path} (listed in "
                        "DataSplits.skipped and, for a run, in its skipped_images.txt)"]


# ---------------------------------------------------------------- odd but valid formats, converted to RGB


def png16_rgb(values: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand: Pillow has no mode to save one from."""
    h, w, _ = values.shape
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_gray_alpha_palette_16_bit_cmyk_and_float_images_become_the_right_rgb(tmp_path, photos):
    rgb = photos[3]
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    dark16 = (gray.astype(np.uint16) * 16)  # a 12-bit-range image: clipping at 255 would turn it white
    cases: dict[str, tuple[bytes | Image.Image, np.ndarray, float]] = {}  # file: (content, expected RGB, tolerance)

    def expect(name, content, want, tol=0.0):
        cases[name] = (content, want if want.ndim == 3 else np.repeat(want[..., None], 3, axis=2), tol)

    expect("01_gray.png", encode(gray, "PNG"), gray)
    expect("02_gray_alpha.png", encode(Image.fromarray(rgb).convert("LA"), "PNG"), gray)
    rgba = Image.fromarray(rgb).convert("RGBA")
    rgba.putalpha(Image.fromarray((np.arange(64 * 64) % 256).reshape(64, 64).astype(np.uint8)))
    expect("03_rgba.png", encode(rgba, "PNG"), rgb)  # alpha dropped, colour kept
    palette = Image.fromarray(rgb).convert("P")
    expect("04_palette.png", encode(palette, "PNG"), np.asarray(palette.convert("RGB")))
    expect("05_palette_transparent.png", encode(palette, "PNG", transparency=0), np.asarray(palette.convert("RGB")))
    expect("06_palette.gif", encode(palette, "GIF"), np.asarray(palette.convert("RGB")))
    expect("07_bilevel.png", encode(Image.fromarray(gray).convert("1"), "PNG"),
           np.asarray(Image.fromarray(gray).convert("1").convert("L")))
    expect("08_gray16.png", encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"), gray)
    expect("09_dark16.png", encode(Image.fromarray(dark16), "PNG"), np.round(dark16 / 257).astype(np.uint8))
    expect("10_rgb16.png", png16_rgb(rgb.astype(np.uint16) * 257), rgb)
    expect("11_gray16.tif", encode(Image.fromarray(gray.astype(np.uint16) * 257), "TIFF"), gray)
    expect("12_int32.tif", encode(Image.fromarray(gray.astype(np.int32) * 257), "TIFF"), gray)
    expect("13_float01.tif", encode(Image.fromarray(gray.astype(np.float32) / 255), "TIFF"), gray)
    expect("14_float255.tif", encode(Image.fromarray(gray.astype(np.float32)), "TIFF"), gray)
    expect("15_cmyk.tif", encode(Image.fromarray(rgb).convert("CMYK"), "TIFF"), rgb)
    expect("16_cmyk.jpg", encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=98), rgb, tol=3.0)
    expect("17_gray.jpg", encode(gray, "JPEG", quality=98), gray, tol=2.0)
    with Image.open(io.BytesIO(cases["16_cmyk.jpg"][0])) as im:
        assert im.mode == "CMYK"  # Adobe's inverted CMYK, undone by Pillow
    with Image.open(io.BytesIO(cases["08_gray16.png"][0])) as im:
        assert im.mode == "I;16"
    # the pixel values no 8-bit reading makes sense of are skipped, not clipped into garbage
    nan = gray.astype(np.float32) / 255
    nan[5, 5] = np.nan
    unreadable = {
        "20_nan.tif": (encode(Image.fromarray(nan), "TIFF"), "non-finite pixel values"),
        "21_negative.tif": (encode(Image.fromarray(gray.astype(np.float32) - 100), "TIFF"), "negative pixel values"),
        "22_beyond16.tif": (encode(Image.fromarray(gray.astype(np.int32) * 1000), "TIFF"), "pixel values up to"),
    }
    train_val_tree(tmp_path, photos)
    odd = tmp_path / "train" / "a"
    for name, (content, *_) in {**cases, **unreadable}.items():
        (odd / name).write_bytes(content)
    splits, _ = load_quietly(f"folder:{tmp_path}")

    assert {Path(p).name: why.split(" in a mode")[0].split(" (min")[0] for p, why in splits.skipped} == {
        "20_nan.tif": "non-finite pixel values (NaN or inf)",
        "21_negative.tif": "negative pixel values",
        "22_beyond16.tif": f"pixel values up to {int(gray.max()) * 1000}",
    }
    # sorted file order is kept: good0.png, good1.png come after the numbered odd files
    loaded = class_images(splits, "train", "a").permute(0, 2, 3, 1).numpy()
    assert len(loaded) == len(cases) + 2
    for got, (name, (_, want, tol)) in zip(loaded, sorted(cases.items()), strict=False):
        err = np.abs(got.astype(int) - want.astype(int)).mean()
        assert err <= tol, f"{name}: mean error {err:.2f} against the expected RGB"


# ---------------------------------------------------------------- folders that cannot make a data set


def test_folders_without_two_usable_classes_are_clear_errors(tmp_path, photos):
    one_line_error(lambda: load_dataset(f"folder:{tmp_path / 'missing'}"), "folder not found")
    (tmp_path / "file.npz").write_bytes(b"x")
    one_line_error(lambda: load_dataset(f"folder:{tmp_path / 'file.npz'}"), "is a file", "npz:PATH")
    root = tmp_path / "tree"
    root.mkdir()
    one_line_error(lambda: load_dataset(f"folder:{root}"), "no class sub-folders", "<class>/<image files>")
    (root / "cats").mkdir()
    for i in range(4):
        Image.fromarray(photos[i]).save(root / "cats" / f"{i}.png")
    one_line_error(lambda: load_dataset(f"folder:{root}"), "only one class ('cats')", "at least 2")
    (root / "dogs").mkdir()  # empty: left out with a warning, which leaves one class
    one_line_error(lambda: load_dataset(f"folder:{root}"), "only one class ('cats')", "has files")
    for i in range(3):
        (root / "dogs" / f"{i}.jpg").write_bytes(b"\xff\xd8\xff" + bytes(50))
    (root / "dogs" / "readme.txt").write_text("dogs")
    one_line_error(lambda: load_dataset(f"folder:{root}"), "class 'dogs' has no readable images",
                   "(4 file(s) tried, all skipped)")


# ---------------------------------------------------------------- npz arrays


def good_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "x_train": rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8),
        "y_train": np.array([0, 0, 0, 1, 1, 1]),
        "x_test": rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8),
        "y_test": np.array([0, 1]),
        "class_names": np.array(["cat", "dog"]),
    }


def write_npz(path: Path, **overrides) -> str:
    arrays = {**good_arrays(np.random.default_rng(0)), **overrides}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return f"npz:{path}"


IMAGES = "[N, H, W, C] with C in (1, 3) or [N, H, W]"


@pytest.mark.parametrize("overrides, fragments", [
    ({"x_train": np.zeros((6, 3, 8, 8), np.uint8)}, [IMAGES, "channels-first", "transpose(0, 2, 3, 1)"]),
    ({"x_train": np.zeros((6, 8, 8, 4), np.uint8)}, [IMAGES, "(6, 8, 8, 4)", "x[..., :3]"]),
    ({"x_train": np.zeros((6, 8, 8, 2), np.uint8)}, [IMAGES, "(6, 8, 8, 2)"]),
    ({"x_train": np.zeros((6, 64), np.uint8)}, [IMAGES, "(6, 64)"]),
    ({"x_train": np.zeros((6, 0, 8, 3), np.uint8)}, ["images of size 0×8"]),
    ({"x_train": np.zeros((0, 8, 8, 3), np.uint8), "y_train": np.zeros(0, int)}, ["x_train is empty"]),
    ({"x_train": np.full((6, 8, 8, 3), np.nan, np.float32)}, ["x_train has 1152 NaN or infinite values", IMAGES]),
    ({"x_train": np.full((6, 8, 8, 3), 300.0)}, ["float64 with values in [300, 300]", "raw pixels"]),
    ({"x_test": np.full((2, 8, 8, 3), -1.5, np.float32)}, ["x_test is float32 with values in [-1.5, -1.5]"]),
    ({"x_train": np.full((6, 8, 8, 3), 1000, np.uint16)}, ["uint16 with values in [1000, 1000]", "16-bit"]),
    ({"x_train": np.zeros((6, 8, 8, 3), bool)}, [IMAGES, "got bool"]),
    ({"y_train": np.array([0, 1, 0, 1])}, ["y_train has 4 labels for 6 images in x_train"]),
    ({"y_train": np.array([0.0, 0, 0, 1, 1, 1])}, ["y_train must be a 1-D integer array of class indices 0..1",
                                                   "float64"]),
    ({"y_train": np.eye(2, dtype=int)[[0, 0, 0, 1, 1, 1]]}, ["one-hot? use y.argmax(1)"]),
    ({"y_train": np.array([[0, 0, 0, 1, 1, 1]])}, ["y_train must be a 1-D integer array", "(1, 6)"]),
    ({"y_test": np.array([0, 2])}, ["y_test has labels in [0, 2], expected 0..1 (2 class_names)"]),
    ({"y_train": np.array([0, 0, 0, 1, 1, -1])}, ["labels in [-1, 1], expected 0..1"]),
    ({"y_train": np.array([1, 1, 1, 2, 2, 2]), "y_test": np.array([1, 2]),
      "class_names": np.array(["zero", "one", "two"])}, ["no images of class(es) ['zero']", "0-based"]),
    ({"class_names": np.array(["cat", "cat"])}, ["class_names must be distinct; repeated: ['cat']"]),
    ({"class_names": np.array([0, 1])}, ["class_names must be a 1-D string array"]),
    ({"class_names": np.array(["cat"])}, ["needs at least 2 classes"]),
    ({"x_test": np.zeros((2, 8, 8, 1), np.uint8)}, ["x_train and x_test differ in image shape"]),
    ({"y_test": None}, ["missing arrays ['y_test']", "x_train"]),
    ({"class_names": np.array(["cat", None], dtype=object)}, ["without pickle"]),
])
def test_npz_with_wrong_arrays_is_a_one_line_error(tmp_path, overrides, fragments):
    spec = write_npz(tmp_path / "bad.npz", **overrides)
    one_line_error(lambda: load_dataset(spec), "bad.npz", *fragments)


def test_npz_images_in_other_layouts_are_converted_exactly(tmp_path):
    x = good_arrays(np.random.default_rng(0))["x_train"]
    want = torch.from_numpy(x).permute(0, 3, 1, 2)
    def rows(images: torch.Tensor) -> list[bytes]:
        return sorted(bytes(r) for r in images.flatten(1).numpy())

    for name, value in {"float01": x / 255.0, "float255": x.astype(np.float32), "int64": x.astype(np.int64)}.items():
        splits = load_dataset(write_npz(tmp_path / f"{name}.npz", x_train=value), val_fraction=0.34)
        assert rows(torch.cat([splits.train.images, splits.val.images])) == rows(want), name
    gray = load_dataset(write_npz(tmp_path / "gray.npz", x_train=x[..., 0], x_test=np.zeros((2, 8, 8), np.uint8)),
                        val_fraction=0.34)
    assert gray.train.images.shape == (3, 1, 8, 8)
    assert rows(torch.cat([gray.train.images, gray.val.images])) == rows(torch.from_numpy(x[..., 0])[:, None])


def test_corrupt_npz_bytes_are_one_line_errors(tmp_path):
    """Cut anywhere or with bytes flipped (300 seeded trials), an .npz loads intact or is a one-line error."""
    buf = io.BytesIO()
    np.savez(buf, **good_arrays(np.random.default_rng(0)))
    data = np.frombuffer(buf.getvalue(), np.uint8)
    path = tmp_path / "fuzz.npz"
    rng = np.random.default_rng(7)
    trials = [data[:cut] for cut in range(0, len(data), 9)]
    for _ in range(300):
        flipped = data.copy()
        k = int(rng.integers(1, 4))
        flipped[rng.integers(0, len(flipped), k)] = rng.integers(0, 256, k, dtype=np.uint8)
        trials.append(flipped)
    errors = 0
    for trial in trials:
        path.write_bytes(trial.tobytes())
        try:
            splits = load_dataset(f"npz:{path}")
        except ValueError as err:
            assert "\n" not in str(err) and str(path) in str(err), str(err)
            errors += 1
            continue
        # a flip in a field that zip does not check (a timestamp, say) leaves the arrays intact
        assert torch.equal(splits.train.labels, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert errors > 0.9 * len(trials)


# ---------------------------------------------------------------- config files


def test_unknown_config_key_lists_the_valid_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2\nlearning_rate: 0.1\n")
    text = one_line_error(lambda: Config.from_yaml(path), "unknown option(s) in", "learning_rate", "valid options:")
    valid = text.split("valid options: ")[1].split(", ")
    assert {"lr", "epochs", "temperature", "dataset"} <= set(valid) and valid == sorted(valid)


@pytest.mark.parametrize("text, fragments", [
    ("epochs: ten\n", ["epochs must be an integer; got 'ten' (str)"]),
    ("epochs: 2.5\n", ["epochs must be an integer; got 2.5"]),
    ("epochs:\n", ["epochs must be an integer; got nothing"]),
    ("batch_size: true\n", ["batch_size must be an integer; got True (bool)"]),
    ("temperature: warm\n", ["temperature must be a number; got 'warm'"]),
    ("lr: .inf\n", ["lr must be a finite number"]),
    ("lr: [0.1, 0.01]\n", ["lr must be a number or null; got [0.1, 0.01] (list)"]),
    ("hflip: 3\n", ["hflip must be true or false; got 3 (int)"]),
    ("dataset: 5\n", ["dataset must be a string; got 5 (int)"]),
    ("augment: {policy: simclr}\n", ["augment must be a string"]),
    ("optimizer: lbfgs\n", ["optimizer must be one of auto, sgd, adam, adamw, rmsprop; got 'lbfgs'"]),
    ("1: 2\n", ["option names must be words, got 1"]),
    ("- epochs\n", ["must hold a mapping of option: value; got list"]),
    ("epochs: [1,\n", ["is not valid YAML"]),
])
def test_bad_values_in_yaml_are_one_line_errors(tmp_path, text, fragments):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    one_line_error(lambda: Config.from_yaml(path), *fragments)


def test_loose_yaml_values_are_read_as_meant(tmp_path):
    path = tmp_path / "c.yaml"
    # PyYAML reads 1e-3 as a string and 30.0 as a float; both mean what they say
    path.write_text("lr: 1e-3\nepochs: 30.0\ntemperature: 1\nhflip: 'no'\nmax_train: null\n")
    cfg = Config.from_yaml(path)
    assert (cfg.lr, cfg.epochs, cfg.temperature, cfg.hflip, cfg.max_train) == (1e-3, 30, 1.0, False, None)
    assert type(cfg.epochs) is int and type(cfg.temperature) is float


def test_random_bytes_as_a_config_file_are_one_line_errors(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "c.yaml"
    for trial in range(60):
        path.write_bytes(rng.integers(0, 256 if trial % 2 else 128, int(rng.integers(1, 200)), np.uint8).tobytes())
        try:
            Config.from_yaml(path)
        except ValueError as err:
            assert "\n" not in str(err) and str(path) in str(err), str(err)


# ---------------------------------------------------------------- the command line


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_bad_config_and_bad_npz_give_one_line_errors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\ntemprature: 0.2\n")
    code, _, err = run_main(["pretrain", "--config", str(cfg)], capsys)
    assert code == 2 and err.count("\n") == 1 and "temprature" in err and "valid options:" in err
    assert "temperature" in err.split("valid options:")[1]
    cfg.write_text("epochs: many\n")
    code, _, err = run_main(["ce", "--config", str(cfg)], capsys)
    assert (code, err) == (2, "supcon ce: error: epochs must be an integer; got 'many' (str)\n")
    spec = write_npz(tmp_path / "bad.npz", y_train=np.array([0, 0, 0, 1, 1, 5]))
    code, _, err = run_main(["ce", "--dataset", spec], capsys)
    assert code == 2 and err == f"supcon ce: error: {tmp_path / 'bad.npz'}: y_train has labels in [0, 5], " \
                                "expected 0..1 (2 class_names)\n"


def test_cli_in_a_real_process_skips_counts_and_lists_bad_files(tmp_path, photos):
    """The whole path, in a fresh interpreter: a folder with broken files trains, says how many it skipped on
    one line, and lists them with their reasons in skipped_images.txt; a corrupt npz ends with one line and
    exit code 2. No traceback either way."""
    for c, offset in (("a", 0), ("b", 4)):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(6):  # enough that every split keeps each class whichever files turn out bad
            pixels = photos[offset + i % 4] if i < 4 else np.ascontiguousarray(photos[offset + i % 4][::-1])
            Image.fromarray(pixels).resize((16, 16)).save(tmp_path / "data" / c / f"{i}.png")
    jpeg = encode(photos[0], "JPEG")
    (tmp_path / "data" / "a" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "data" / "b" / "empty.png").write_bytes(b"")
    (tmp_path / "data" / "b" / "notes.txt").write_text("b")
    (tmp_path / "bad.npz").write_bytes(encode(photos[0], "PNG"))
    script = (
        "import sys; from supcon.cli import main\n"
        f"a = main(['ce', '--dataset', 'folder:{tmp_path / 'data'}', '--epochs', '1', '--batch-size', '4', "
        f"'--val-fraction', '0.25', '--test-fraction', '0.25', '--no-tsne', '--quiet', '--out', "
        f"'{tmp_path / 'run'}'])\n"
        f"b = main(['ce', '--dataset', 'npz:{tmp_path / 'bad.npz'}'])\n"
        "sys.exit(10 * a + b)\n"
    )
    env = {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2, proc.stderr  # the folder run succeeded (0), the npz one failed (2)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"supcon: warning: skipped 3 unreadable image file(s) (1 empty, 1 truncated, 1 not images) in "
        f"{tmp_path / 'data'} (listed in DataSplits.skipped and, for a run, in its skipped_images.txt)",
        f"supcon ce: error: {tmp_path / 'bad.npz'}: not a readable .npz file (not a zip archive)",
    ], proc.stderr
    listed = dict(line.split("\t") for line in (tmp_path / "run" / "skipped_images.txt").read_text().splitlines())
    assert {Path(p).name: why.split(" (")[0] for p, why in listed.items()} == {
        "cut.jpg": "truncated file", "empty.png": "empty file", "notes.txt": "not an image"}
