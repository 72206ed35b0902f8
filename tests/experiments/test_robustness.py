"""Corruptions on real photos, ImageNet-C's corruption errors, and `supcon robustness` end to end."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import assert_picture, run_cli
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

from supcon.cli import build_parser, main
from supcon.evaluate.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    adversarial_accuracy,
    corrupt,
    corruption_errors,
    disk_kernel,
    parameter_table,
)
from supcon.evaluate.inference import hits_array, outputs
from supcon.experiments.robustness import seed_differences
from supcon.experiments.statistics import paired_difference, seed_paired_difference
from supcon.runs import expand_runs
from supcon.runs.load import data_for_run, load_classifier, load_encoder

DOCS = Path(__file__).resolve().parents[2] / "docs" / "robustness.md"


@pytest.fixture(scope="module")
def photos(shared_data):
    """16 ImageNet-5 validation photos at 64 px, two of each class and more, as floats in [0, 1]."""
    with np.load(shared_data / "imagenet5_64.npz") as z:
        idx = np.linspace(0, len(z["y_test"]) - 1, 16).astype(int)
        return torch.from_numpy(z["x_test"][idx]).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_keeps_shape_dtype_and_range_and_grows_with_severity(photos, name):
    differences = []
    for severity in SEVERITIES:
        out = corrupt(photos, name, severity)
        assert out.shape == photos.shape and out.dtype == torch.float32 and out.device == photos.device
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        differences.append((out - photos).abs().mean().item())
    assert differences[0] > 0.003, differences  # severity 1 already changes the photos
    assert all(a < b for a, b in zip(differences, differences[1:], strict=False)), differences
    gray = corrupt(photos[:4, :1], name, 3)  # one channel works too
    assert gray.shape == (4, 1, 64, 64) and gray.min() >= 0 and gray.max() <= 1


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_are_seeded_per_image(photos, name):
    x = photos[:4]
    whole = corrupt(x, name, 4, seeds=[5, 6, 7, 8])
    assert torch.equal(whole, corrupt(x, name, 4, seeds=[5, 6, 7, 8]))
    parts = torch.cat([corrupt(x[:1], name, 4, seeds=[5]), corrupt(x[1:], name, 4, seeds=[6, 7, 8])])
    assert torch.allclose(whole, parts, atol=1e-6)  # an image's corruption does not depend on its batch
    if name in ("gaussian_noise", "shot_noise", "elastic"):
        assert not torch.equal(whole, corrupt(x, name, 4, seeds=[1, 2, 3, 4]))


def test_brightness_is_imagenet_c_hsv_shift(photos):
    # ImageNet-C: V += shift in HSV, clipped, back to RGB; ours is the same in closed form
    for severity, shift in zip(SEVERITIES, (0.1, 0.2, 0.3, 0.4, 0.5), strict=True):
        hsv = rgb_to_hsv(photos[:3].permute(0, 2, 3, 1).numpy())
        hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
        expected = torch.from_numpy(hsv_to_rgb(hsv)).permute(0, 3, 1, 2).float()
        assert torch.allclose(corrupt(photos[:3], "brightness", severity), expected, atol=1e-5)


def test_disk_kernel_and_bad_arguments():
    for radius in (1.0, 1.5, 2.5, 3.0):
        k = disk_kernel(radius)
        assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose(k, k.flip(0)) and torch.allclose(k, k.T)
    assert disk_kernel(1.0).shape == (3, 3) and disk_kernel(2.5).shape == (5, 5)
    assert disk_kernel(0.2).tolist() == [[1.0]]  # inside one pixel: the identity
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="corruption must be one of gaussian_noise"):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity must be one of 1, 2, 3, 4, 5"):
        corrupt(x, "jpeg", 6)
    with pytest.raises(ValueError, match="expected float images"):
        corrupt((x * 255).to(torch.uint8), "jpeg", 1)


def test_the_documented_parameter_table_is_the_code_s():
    assert parameter_table() in DOCS.read_text(), "docs/robustness.md: paste supcon.evaluate.corruptions." \
                                                  "parameter_table() into it again"


def test_corruption_errors_by_hand():
    model = {"noise": {1: 0.8, 2: 0.6}, "blur": {1: 0.9, 2: 0.7}}
    base = {"noise": {1: 0.6, 2: 0.4}, "blur": {1: 0.8, 2: 0.8}}
    e = corruption_errors(model, 0.95, base, 0.9)
    # CE_noise = (0.2 + 0.4) / (0.4 + 0.6) = 0.6; CE_blur = (0.1 + 0.3) / (0.2 + 0.2) = 1.0
    assert e["ce"] == pytest.approx({"noise": 0.6, "blur": 1.0}) and e["mce"] == pytest.approx(0.8)
    # relative: noise (0.6 - 2 * 0.05) / (1.0 - 2 * 0.1) = 0.625; blur (0.4 - 0.1) / (0.4 - 0.2) = 1.5
    assert e["relative_ce"] == pytest.approx({"noise": 0.625, "blur": 1.5})
    assert e["relative_mce"] == pytest.approx(1.0625)
    same = corruption_errors(base, 0.9, base, 0.9)
    assert same["mce"] == pytest.approx(1.0) and same["relative_mce"] == pytest.approx(1.0)
    perfect = corruption_errors(model, 0.95, {"noise": {1: 1.0, 2: 1.0}, "blur": base["blur"]}, 1.0)
    assert perfect["ce"]["noise"] is None and perfect["mce_over"] == ["blur"]  # 0 / 0 is left out of the mean


# ---------------------------------------------------------------------------------------------- end to end

TRAIN = ["--dataset", "digits", "--max-train", "300", "--max-val", "120", "--epochs", "4", "--linear-epochs", "6",
         "--batch-size", "32", "--augment", "none", "--knn-every", "0", "--no-tsne", "--quiet"]


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("robust") / "cmp"
    assert main(["compare", *TRAIN, "--label-noise", "0.1", "--out", str(out)]) == 0
    return out


def test_compare_trains_both_methods_on_the_same_noisy_labels(compare_run):
    for part in ("", "supcon", "ce"):
        assert yaml.safe_load((compare_run / part / "config.yaml").read_text())["label_noise"] == 0.1
        # a tenth of the 300 training and of the 120 validation labels; the test split is clean
        assert json.loads((compare_run / part / "results.json").read_text())["noisy_labels"] == 30 + 12


def test_robustness_of_a_compare_run_through_the_cli(compare_run, tmp_path, capsys):
    out = tmp_path / "rob"
    code, text, err = run_cli(capsys, "robustness", compare_run, "--corruptions", "gaussian_noise,pixelate",
                              "--severities", "1,5", "--eps", "4,32", "--pgd-steps", "3", "--out", out, "--quiet")
    assert code == 0, err
    assert "| cmp/supcon (SupCon + linear) | 10% sym |" in text and "| cmp/ce (cross-entropy) | 10% sym |" in text
    assert f"in {out}" in text
    for name in ("robustness.md", "robustness.json", "robustness.csv"):
        assert (out / name).read_text().strip(), name
    assert_picture(out / "robustness.png", panels=2)  # SupCon's heat map and its difference from CE's, then CE's
    assert_picture(out / "reliability.png", panels=2) and assert_picture(out / "margins.png")
    report = json.loads((out / "robustness.json").read_text())
    assert report["baseline"] == "cmp/ce" and report["severities"] == [1, 5]
    supcon, ce = report["runs"]
    for run in (supcon, ce):
        assert run["test_images"] == 270 and run["dataset"] == "digits"  # on the clean test split
        assert set(run["corruptions"]) == {"gaussian_noise", "pixelate"}
        assert set(run["corruptions"]["pixelate"]) == {"1", "5"} and set(run["adversarial"]["pgd"]) == {"4", "32"}
        assert 0 <= run["calibration"]["ece"] <= 1
        # pixelate 0.5 of an 8-px digit leaves 4 x 4 pixels: worse than clean
        assert run["corruptions"]["pixelate"]["5"] < run["clean_acc"]
    assert ce["mce"] == pytest.approx(1.0) and ce["relative_mce"] in (None, pytest.approx(1.0))
    assert supcon["mce"] == pytest.approx(sum(supcon["ce"].values()) / 2)
    expected_acc = json.loads((compare_run / "ce" / "results.json").read_text())["runs"][0]["test_acc"]
    assert ce["clean_acc"] == pytest.approx(expected_acc, abs=1e-6)  # the run's own test split
    with open(out / "robustness.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {"run": "cmp/ce", "method": "ce", "metric": "mce", "condition": "all", "level": ""}.items() <= \
        next(r for r in rows if r["run"] == "cmp/ce" and r["metric"] == "mce").items()
    assert sum(r["metric"] == "accuracy" for r in rows) == 2 * (1 + 2 * 2 + 2 * 2)
    (pair,) = report["differences"]  # one seed: SupCon minus CE without an interval
    assert pair["seeds"] == [0] and pair["label_noise"] == 0.1
    by_metric = {m["metric"]: m for m in pair["metrics"]}
    assert by_metric["clean_acc"]["difference"] == pytest.approx(supcon["clean_acc"] - ce["clean_acc"])
    assert by_metric["pgd_32"]["difference"] == pytest.approx(supcon["adversarial"]["pgd"]["32"]
                                                             - ce["adversarial"]["pgd"]["32"])
    assert all(m["ci"] is None and m["favours"] is None for m in pair["metrics"])
    md = (out / "robustness.md").read_text()
    assert "### SupCon − CE on digits, 10% sym label noise: 1 seed pair (0)" in md
    assert "| gaussian_noise |" in md and "PGD 32" in md and "![reliability diagrams](reliability.png)" in md
    # again into the same directory, calibration only: no heat map of the earlier report is left behind
    code, text, err = run_cli(capsys, "robustness", compare_run / "ce", "--corruptions", "none", "--attacks", "none",
                              "--out", out, "--quiet")
    assert code == 0, err
    assert not (out / "robustness.png").exists() and "robustness.png" not in text and "reliability.png" in text
    again = json.loads((out / "robustness.json").read_text())["runs"]
    assert len(again) == 1 and again[0]["calibration"] == ce["calibration"] and again[0]["mce"] is None


def test_a_normalising_run_is_attacked_in_pixel_space():
    from supcon.augment import Inputs
    from supcon.models import Classifier, build_encoder

    torch.manual_seed(0)
    net = Classifier(build_encoder("smallcnn", 3, 16), 4).eval()
    inputs = Inputs(16, 3, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    model = Classifier(net.encoder, net.fc, mean=inputs.mean, std=inputs.std)
    expected = outputs(net, images, transform=inputs.plain())  # what training and evaluation fed it
    assert torch.allclose(outputs(model, images), expected, atol=1e-5)


def test_attacks_lower_the_accuracy_of_the_trained_ce_run(compare_run):
    model = load_classifier(compare_run / "ce").model
    _, cfg, inputs = load_encoder(compare_run / "ce")
    data = data_for_run(compare_run / "ce", cfg, inputs)
    images, labels = data.val.images, data.val.labels
    clean = (outputs(model, images).argmax(1) == labels).double().mean().item()
    assert clean > 0.8
    fgsm_acc = adversarial_accuracy(model, images, labels, "fgsm", [32 / 255])[32 / 255]
    pgd_acc = adversarial_accuracy(model, images, labels, "pgd", [8 / 255, 32 / 255], steps=10)
    # 8-px digits hold 17 grey levels, so 8/255 moves them little; 32/255 is two levels
    assert pgd_acc[32 / 255] < clean - 0.2
    assert pgd_acc[32 / 255] <= fgsm_acc + 0.02  # ten steps find at least what one step finds
    assert pgd_acc[32 / 255] < pgd_acc[8 / 255] <= clean


def test_runs_it_cannot_read_are_one_line_errors(compare_run, tmp_path, capsys):
    pretrain_only = tmp_path / "pretrain"
    shutil.copytree(compare_run / "supcon", pretrain_only)
    (pretrain_only / "linear.safetensors").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    damaged = tmp_path / "damaged"
    shutil.copytree(compare_run / "ce", damaged)
    (damaged / "linear.safetensors").write_bytes(b"not safetensors")
    for args, message in (
            ([damaged], f"cannot read {damaged / 'linear.safetensors'}: "),
            ([pretrain_only], f"{pretrain_only} has no linear head (linear.safetensors): a pretrain run needs its "
                              f"linear probe first (supcon linear --run {pretrain_only})"),
            ([empty], f"{empty} is not a run directory (no results.json, and no supcon/ or ce/ run in it)"),
            ([compare_run, "--baseline", compare_run], "--baseline must be one run"),
            ([compare_run, "--corruptions", "fog"], "unknown corruption 'fog'; expected some of gaussian_noise"),
            ([compare_run, "--severities", "0"], "severities must be among 1, 2, 3, 4, 5"),
            ([compare_run, "--attacks", "cw"], "unknown attack 'cw'; expected some of fgsm, pgd")):
        code, text, err = run_cli(capsys, "robustness", *args, "--out", tmp_path / "never", "--quiet")
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "never").exists()
    assert [name for name, _ in expand_runs([compare_run, compare_run / "ce"])] == ["cmp/supcon", "cmp/ce"]


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["robustness", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("RUN_DIR", "--baseline RUN_DIR", "--corruptions LIST", "--severities LIST", "--attacks LIST",
                   "--eps LIST", "--pgd-steps N", "--bins N", "--max-images N", "--seed N", "--batch-size N",
                   "--device DEVICE", "--out DIR", "--quiet", "(default: 1,2,4,8)", "(default: 10)",
                   "(default: 15)"):
        assert option in text, option


def _record(method, seed, clean, ece, noise=0.0):
    return {"method": method, "seed": seed, "dataset": "d", "label_noise": noise, "label_noise_mode": "symmetric",
            "test_images": 100, "clean_acc": clean, "corrupted_acc": clean - 0.1, "adversarial": {},
            "calibration": {"ece": ece, "margin_quantiles": {"p50": 1.0}}}


def test_seed_differences_pair_runs_by_seed_and_condition_and_read_each_measurement_s_direction():
    runs = [_record("supcon", s, 0.6 + 0.01 * s, 0.02) for s in range(3)]
    runs += [_record("ce", s, 0.7 + 0.012 * s, 0.10 + 0.001 * s) for s in range(3)]
    runs += [_record("supcon", 3, 0.9, 0.0),  # no CE partner: not a pair
             _record("supcon", 0, 0.5, 0.1, noise=0.2), _record("ce", 0, 0.5, 0.1, noise=0.2)]
    clean, noisy = seed_differences(runs, [])
    assert clean["seeds"] == [0, 1, 2] and clean["label_noise"] == 0.0 and noisy["seeds"] == [0]
    m = {x["metric"]: x for x in clean["metrics"]}
    assert m["clean_acc"]["difference"] == pytest.approx(-0.102) and m["clean_acc"]["favours"] == "ce"
    # the same difference in every seed is no spread to estimate: that interval has no width and calls no side
    # (accuracies that differ between seeds, as PGD's at 8/255 on ImageNet-5: the differences agree up to rounding)
    same = {x["metric"]: x for x in seed_differences(
        [_record("supcon", k, acc, 0.02) for k, acc in enumerate((0.08, 0.1, 0.124))]
        + [_record("ce", k, acc, 0.02) for k, acc in enumerate((0.024, 0.044, 0.068))], [])[0]["metrics"]}
    assert same["clean_acc"]["difference"] == pytest.approx(0.056) and same["clean_acc"]["favours"] is None
    # lower is more robust for the calibration error: SupCon's smaller ECE favours SupCon
    assert m["ece"]["difference"] == pytest.approx(-0.081) and m["ece"]["favours"] == "supcon"
    assert m["median_margin"]["difference"] == 0 and m["median_margin"]["favours"] is None
    assert not any(x["metric"].startswith(("fgsm", "pgd")) for x in clean["metrics"])  # no attack was run



def test_accuracies_with_per_image_hits_get_compare_s_interval_over_seeds_and_images():
    """Where every run kept its per-image hits, an accuracy's SupCon − CE interval is compare's two-level one
    (the same numbers as statistics.paired_difference on those hits); the calibration error keeps the seeds' t."""
    rng = np.random.default_rng(0)
    runs = []
    for method, p in (("supcon", 0.62), ("ce", 0.7)):
        for seed in range(3):
            hits = rng.random(100) < p + 0.02 * seed
            record = _record(method, seed, float(hits.mean()), 0.05 + 0.01 * seed)
            record["test_correct"] = "".join("1" if h else "0" for h in hits)
            runs.append(record)
    (clean,) = seed_differences(runs, [])
    m = {x["metric"]: x for x in clean["metrics"]}
    a = np.stack([hits_array(r["test_correct"]) for r in runs[:3]])
    b = np.stack([hits_array(r["test_correct"]) for r in runs[3:]])
    want = paired_difference(a, b)
    assert m["clean_acc"]["method"].startswith("two-level") and m["clean_acc"]["ci"] == pytest.approx(want["ci"])
    assert m["clean_acc"]["difference"] == pytest.approx(want["supcon_minus_ce"])
    seeds_only = seed_paired_difference([r["clean_acc"] for r in runs[:3]], [r["clean_acc"] for r in runs[3:]])
    assert want["ci"][1] - want["ci"][0] > seeds_only["ci"][1] - seeds_only["ci"][0]  # the images' share added
    assert m["ece"]["method"].startswith("t-interval")
