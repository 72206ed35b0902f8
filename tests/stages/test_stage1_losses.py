"""The stage-1 losses and the kNN monitor inside the pipeline: pretrain, compare, sweep, the knn command and the
notes compare writes from the monitor. On digits (bundled with scikit-learn), small and short."""

import csv
import json
import math

import pytest
import torch
from conftest import QUICK

from supcon.cli import build_parser, main
from supcon.config import Config
from supcon.experiments.sweep import Sweep, parse_axis
from supcon.io import read_json
from supcon.reporting.notes import convergence_note, knn_note
from supcon.reporting.sweep import describe_cell
from supcon.stages import train_run
from supcon.stages.pretrain import loss_floor


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["maxmargin", "npairs"])
def test_each_loss_trains_and_is_recorded_with_the_monitor(loss, digits, tmp_path):
    result = train_run("supcon", Config(**QUICK, loss=loss), digits, tmp_path, until="pretrain")
    assert read_json(tmp_path / "results.json")["runs"][0]["loss"] == loss
    assert "loss: " + loss in (tmp_path / "config.yaml").read_text()
    rows = _metrics(tmp_path)
    # auto, while stage 1 stops on it (--patience 10): every epoch
    assert [r["epoch"] for r in rows if "knn_acc" in r] == [1, 2]
    summary = result.summary
    assert summary["knn_curve"][0][0] == 0 and [e for e, _ in summary["knn_curve"][1:]] == [1, 2]
    best = max(rows, key=lambda r: r["knn_acc"])  # the epoch stage 1 kept, and its kNN accuracy
    assert summary["pretrain_best_epoch"] == best["epoch"] and summary["knn_acc"] == best["knn_acc"]
    assert 0.5 < summary["knn_acc"] <= 1  # digits: easy
    assert summary["knn_every"] == 1 and summary["knn_chance"] == pytest.approx(0.1, abs=0.02)
    assert 0 <= summary["stage1_loss_floor"] < summary["stage1_loss"] and math.isfinite(summary["stage1_loss"])
    assert summary["stage1_progress"] is not None and summary["stage1_progress"] < 1


def test_the_monitor_never_changes_what_is_trained(digits, tmp_path):
    watched = train_run("supcon", Config(**QUICK, knn_every="1"), digits, tmp_path, until="pretrain")
    unwatched = train_run("supcon", Config(**QUICK, knn_every="0"), digits, until="pretrain")
    assert [r["loss"] for r in watched.fit.history] == [r["loss"] for r in unwatched.fit.history]
    assert all("knn_acc" in r for r in _metrics(tmp_path))
    assert "knn_acc" not in unwatched.summary and not any("knn_acc" in r for r in unwatched.fit.history)


def test_loss_floors():
    labels = torch.tensor([0, 0, 1, 1])
    assert loss_floor(labels, 2, "npairs") == pytest.approx(math.log(4))  # itself, its view, 2 of the other
    assert loss_floor(labels, 2, "supcon_in") == pytest.approx(math.log(3))
    assert loss_floor(labels, 2, "maxmargin") == 0.0


def test_config_checks_the_new_options(tmp_path):
    assert Config(knn_every=5).knn_every == "5"  # as from `knn_every: 5` in a YAML file
    with pytest.raises(ValueError, match="knn_every must be auto or a whole number"):
        Config(knn_every="often")
    with pytest.raises(ValueError, match="margin must be positive"):
        Config(margin=0)
    with pytest.raises(ValueError, match="margin_distance must be one of euclidean, cosine"):
        Config(margin_distance="manhattan")
    with pytest.raises(ValueError, match="contrast_mode one is an option of the supcon, supcon_in and simclr"):
        Config(loss="npairs", contrast_mode="one")
    path = tmp_path / "c.yaml"
    path.write_text("loss: maxmargin\nmargin: 0.5\nknn_every: 3\n")
    assert Config.from_yaml(path).knn_every == "3"
    args = build_parser().parse_args(["pretrain", "--loss", "maxmargin", "--margin-distance", "cosine",
                                      "--knn-every", "auto", "--knn-k", "10"])
    assert (args.loss, args.margin_distance, args.knn_every, args.knn_k) == ("maxmargin", "cosine", "auto", 10)


def _run(curve, **extra):
    return {"method": "supcon", "loss": "supcon", "knn_curve": curve, "knn_chance": 0.2, **extra}


def test_knn_note_says_when_stage1_never_started_or_stopped_early():
    at_chance = knn_note(_run([[0, 0.21], [1, 0.22], [5, 0.2], [10, 0.23]]))
    assert at_chance.startswith("Stage 1 never started: the kNN accuracy of its encoder stayed at chance (best "
                                "0.230 over epochs 1-10; always guessing the largest class scores 0.200)")
    flat = knn_note(_run([[0, 0.52], [1, 0.5], [5, 0.53], [10, 0.51]]))
    assert flat.startswith("Stage 1 never started: the kNN accuracy of its encoder never rose above the "
                           "untrained encoder's (0.520 before training, best 0.530 over epochs 1-10)")
    early = knn_note(_run([[0, 0.4], [1, 0.5], [5, 0.62], [10, 0.63], [15, 0.61], [20, 0.62]]))
    assert early.startswith("Stage 1 stopped improving early: the kNN accuracy of its encoder came within 0.020 "
                            "of its best (0.630) by epoch 5 of 20 and ended at 0.620")
    assert knn_note(_run([[0, 0.4], [1, 0.45], [5, 0.5], [10, 0.56], [15, 0.6], [20, 0.64]])) is None
    # Near the top, a point is a tenth of what is left: an untrained CNN scores 0.94 on digits.
    assert knn_note(_run([[0, 0.94], [1, 0.95], [2, 0.955]])) is None
    assert knn_note({"method": "ce", "knn_acc": 0.3}) is None and knn_note(_run([])) is None
    # Both notes at once: the loss was far from its floor, and the features did not move.
    both = convergence_note(_run([[0, 0.52], [1, 0.5], [5, 0.53]], loss="maxmargin", stage1_loss_start=0.3,
                                 stage1_loss=0.28, stage1_loss_floor=0.0, stage1_progress=0.07))
    assert "max-margin was compared far from convergence" in both and "never rose above the untrained encoder's" in both


def test_compare_with_the_max_margin_loss_then_knn_of_its_encoder(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["--max-train", "300", "--max-val", "150", "--epochs", "2", "--linear-epochs", "3", "--batch-size", "64",
            "--quiet", "--no-tsne", "--encoder", "smallcnn"]
    assert main(["compare", "--loss", "maxmargin", *args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert ("| method | test acc (95% CI) | val acc | stage-1 loss | kNN acc | train acc | optimizer steps "
            "| time per seed |") in text
    assert "| max-margin + linear |" in text and "| max-margin + linear |" in (out / "results.md").read_text()
    runs = read_json(out / "results.json")["runs"]
    assert [r["loss"] for r in runs] == ["maxmargin", "ce"]
    # the CE encoder is measured the same way, once; on digits even an untrained CNN's features reach about 0.9 by
    # kNN (0.92 measured at epoch 0), against a chance of 0.11, so anything near chance is a broken measurement
    assert all(0.5 < r["knn_acc"] <= 1 for r in runs)
    assert [r["epoch"] for r in _metrics(out / "supcon") if "knn_acc" in r] == [1, 2]
    assert main(["knn", str(out / "supcon")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"kNN accuracy {runs[0]['knn_acc']:.4f} on digits: 150 validation images classified by "
                           "their 20 nearest of 300 training images (cosine, exp(s/0.07) votes)")
    assert main(["knn", str(out / "ce"), "--weights", "uniform", "--k", "5"]) == 0
    assert "by their 5 nearest" in capsys.readouterr().out
    assert main(["knn", str(out)]) == 0  # the comparison's SupCon run, as predict reads it
    assert capsys.readouterr().out.strip() == line.replace(str(out / "supcon"), str(out))


def test_a_sweep_over_the_losses(tmp_path, capsys):
    assert parse_axis("loss=supcon,supcon_in,maxmargin,npairs") == ("loss", ["supcon", "supcon_in", "maxmargin",
                                                                              "npairs"])
    cells = Sweep(Config(), grid={"loss": ["supcon", "supcon_in", "maxmargin", "npairs"]},
                  ce_grid={"optimizer": ["adamw"]}).cells()
    assert [c[0] for c in cells] == ["supcon-supcon", "supcon-supcon_in", "supcon-maxmargin", "supcon-npairs",
                                     "ce-adamw"]
    assert [describe_cell(m, cfg, ["loss"]) for _, m, cfg in cells[:4]] == [
        "SupCon", "SupCon (L_in)", "max-margin", "npairs"]
    flags = ["--dataset", "digits", "--encoder", "smallcnn", "--max-train", "200", "--max-val", "100", "--epochs",
             "1", "--linear-epochs", "2", "--batch-size", "64", "--quiet", "--no-tsne"]
    assert main(["sweep", *flags, "--grid", "loss=maxmargin,npairs", "--no-ce", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "sweep.md").read_text()
    assert table.startswith("| Optimizer + lr strategy + augmentation | stage-1 loss | kNN acc |")
    assert "| max-margin |" in table and "| npairs |" in table
    with open(tmp_path / "sweep.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["loss"] for r in rows] == ["maxmargin", "npairs"]
    assert all(float(r["knn_acc"]) > 0.5 for r in rows)  # chance is 0.11; an untrained CNN already gives about 0.9
