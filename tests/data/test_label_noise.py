"""Label noise: the exact rate, determinism, the two modes, and a clean validation split in every command."""

import pytest
import torch
import yaml

from supcon.cli import main
from supcon.config import Config
from supcon.data import describe, load_dataset, noisy_labels, with_label_noise
from supcon.stages import load_data


@pytest.fixture(scope="module")
def all_digits():
    return load_dataset("digits")


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.2, 0.4, 0.9])
@pytest.mark.parametrize("mode", ["sym", "asym"])
def test_exactly_round_p_n_labels_change_and_each_to_another_class(all_digits, rate, mode):
    clean = all_digits.train.labels
    noisy, changed = noisy_labels(clean, rate, all_digits.num_classes, mode, seed=3)
    differs = torch.nonzero(noisy != clean).flatten()
    assert len(differs) == round(rate * len(clean))  # 1,527 labels: 0.05 -> 76, 0.2 -> 305, 0.9 -> 1374
    assert torch.equal(differs, changed)
    assert noisy.dtype == torch.int64 and len(noisy) == len(clean)
    assert int(noisy.min()) >= 0 and int(noisy.max()) < all_digits.num_classes
    if mode == "asym":
        assert torch.equal(noisy[changed], (clean[changed] + 1) % all_digits.num_classes)


def test_symmetric_noise_reaches_every_other_class_evenly(all_digits):
    clean = all_digits.train.labels
    noisy, changed = noisy_labels(clean, 0.8, 10, "sym", seed=0)
    offsets = (noisy[changed] - clean[changed]) % 10
    counts = torch.bincount(offsets, minlength=10)
    assert counts[0] == 0  # never the true class
    expected = len(changed) / 9
    assert (counts[1:].double() - expected).abs().max() < 0.3 * expected  # 1222 draws: about 136 each


def test_noise_is_deterministic_given_the_seed_and_nested_across_rates(all_digits):
    clean = all_digits.train.labels
    a, ia = noisy_labels(clean, 0.2, 10, "sym", seed=7)
    b, ib = noisy_labels(clean, 0.2, 10, "sym", seed=7)
    c, _ = noisy_labels(clean, 0.2, 10, "sym", seed=8)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    assert not torch.equal(a, c)
    _, wider = noisy_labels(clean, 0.4, 10, "sym", seed=7)
    assert set(ia.tolist()) <= set(wider.tolist())  # 40% noise flips the 20% run's images and more


def test_bad_noise_options_are_one_line_errors(all_digits):
    with pytest.raises(ValueError, match=r"label noise must be in \[0, 1\)"):
        noisy_labels(all_digits.train.labels, 1.0, 10)
    with pytest.raises(ValueError, match="mode must be one of sym, asym"):
        noisy_labels(all_digits.train.labels, 0.1, 10, "pairs")
    with pytest.raises(ValueError, match="label_noise must be in"):
        Config(label_noise=-0.1)
    with pytest.raises(ValueError, match="label_noise_mode must be one of sym, asym"):
        Config(label_noise_mode="flip")


def test_load_data_noises_train_and_val_and_leaves_test_clean(all_digits):
    """A practitioner stops early on labels as noisy as the training labels; only the test split is clean."""
    cfg = Config(dataset="digits", label_noise=0.3, quiet=True)  # split seed 0: the splits of the fixture
    data = load_data(cfg)
    for name in ("train", "val"):
        clean, noisy = getattr(all_digits, name), getattr(data, name)
        assert int((noisy.labels != clean.labels).sum()) == round(0.3 * len(clean))
        assert torch.equal(noisy.images, clean.images)
    assert data.noisy_labels == round(0.3 * 1257) + round(0.3 * 270) == 458
    assert torch.equal(data.test.labels, all_digits.test.labels) and torch.equal(data.test.images,
                                                                               all_digits.test.images)
    assert "458 of 1527 training and validation labels noisy" in describe(data)
    again = load_data(cfg.replace(seed=5))  # the training seed does not move the noise: the split seed does
    assert torch.equal(again.train.labels, data.train.labels) and torch.equal(again.val.labels, data.val.labels)
    other = load_data(cfg.replace(split_seed=1))
    assert not torch.equal(other.train.labels, data.train.labels)
    assert with_label_noise(all_digits, 0.0) is all_digits


def test_ce_records_the_noise_in_its_run(tmp_path, capsys):
    out = tmp_path / "ce"
    code = main(["ce", "--max-train", "200", "--max-val", "100", "--epochs", "1", "--batch-size", "64", "--quiet",
                 "--no-tsne", "--knn-every", "0", "--label-noise", "0.25", "--label-noise-mode", "asym",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["label_noise"] == 0.25 and saved["label_noise_mode"] == "asym"
    results = yaml.safe_load((out / "results.json").read_text())
    assert results["noisy_labels"] == 50 + 25  # a quarter of the 200 training and of the 100 validation labels
