"""The test split plays no part in any choice: poisoned test labels change the test numbers and nothing else."""

from __future__ import annotations

import dataclasses
import json

import torch
from conftest import QUICK

from supcon.config import Config
from supcon.data import ImageDataset, load_data
from supcon.experiments.compare import compare
from supcon.experiments.sweep import Sweep, run_sweep

OPTIONS = {**QUICK, "max_train": 200, "max_val": 100, "epochs": 2, "linear_epochs": 6, "patience": 2,
           "knn_every": "1", "seeds": 2}


def _poisoned(data):
    """The same data with the test labels permuted: every choice that looks at test would now choose otherwise."""
    perm = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(0))
    test = ImageDataset(data.test.images, data.test.labels[perm], data.test.class_names)
    assert (test.labels != data.test.labels).float().mean() > 0.5
    return dataclasses.replace(data, test=test)


def _without(record: dict, *prefixes: str) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(prefixes) and "seconds" not in k}


def _metrics(run_dir) -> list[dict]:
    return [_without(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_poisoned_test_labels_change_only_the_test_numbers(tmp_path):
    cfg = Config(**OPTIONS)
    data = load_data(cfg)
    clean = compare(cfg, tmp_path / "clean", data, log=lambda line: None)
    poisoned = compare(cfg, tmp_path / "poisoned", _poisoned(data), log=lambda line: None)
    for part in ("seed-0/supcon", "seed-0/ce", "seed-1/supcon", "seed-1/ce"):
        # every epoch's training loss, validation accuracy and kNN reading, bit for bit
        assert _metrics(tmp_path / "clean" / part) == _metrics(tmp_path / "poisoned" / part), part
    for a, b in zip(clean["runs"], poisoned["runs"], strict=True):
        # the epoch restored, when training stopped, the validation accuracy: the same; test: not
        assert _without(a, "test_") == _without(b, "test_")
        assert a["best_epoch"] == b["best_epoch"] and a["val_acc"] == b["val_acc"]
        assert a["test_correct"] != b["test_correct"]
    for method in ("supcon", "ce"):
        assert clean["methods"][method]["val_acc"] == poisoned["methods"][method]["val_acc"]
    assert clean["difference"] != poisoned["difference"]  # the verdict is computed on test alone


def test_a_sweep_chooses_its_cells_on_validation_alone(tmp_path):
    cfg = Config(**{**OPTIONS, "epochs": 1})
    data = load_data(cfg)
    grid, ce_grid = {"temperature": [0.1, 0.5]}, {"optimizer": ["adam", "sgd"]}
    clean = run_sweep(Sweep(cfg, grid, ce_grid), tmp_path / "clean", log=lambda line: None, data=data)
    poisoned = run_sweep(Sweep(cfg, grid, ce_grid), tmp_path / "poisoned", log=lambda line: None,
                         data=_poisoned(data))
    assert [r["val_acc"] for r in clean] == [r["val_acc"] for r in poisoned]
    assert [r["test_acc"] for r in clean] != [r["test_acc"] for r in poisoned]  # (a model at chance may tie)
    chosen = [json.loads((tmp_path / which / "sweep.json").read_text()) for which in ("clean", "poisoned")]
    assert {m: c["cell"] for m, c in chosen[0]["best"].items()} == {m: c["cell"] for m, c in chosen[1]["best"].items()}
    assert chosen[0]["chosen_on"] == "val_acc" and chosen[0]["difference"] != chosen[1]["difference"]


def test_tuning_chooses_on_validation_alone_with_equal_trials(tmp_path):
    """compare --tune: every method gets the same trials; poisoned test labels change no choice and no val figure."""
    cfg = Config(**{**OPTIONS, "epochs": 1, "linear_epochs": 3, "seeds": 1, "tune": True})
    data = load_data(cfg)
    clean = compare(cfg, tmp_path / "clean", data, log=lambda line: None)
    poisoned = compare(cfg, tmp_path / "poisoned", _poisoned(data), log=lambda line: None)
    tuning = clean["tuning"]
    assert set(tuning) == {"supcon", "ce"} and {len(t["trials"]) for t in tuning.values()} == {4}
    assert tuning["ce"]["default_lr"] == 1e-3 and [(t["optimizer"], t["lr"]) for t in tuning["ce"]["trials"]] == \
        [("adamw", 3.33e-4), ("adamw", 1e-3), ("adamw", 3e-3), ("sgd", 0.1)]
    assert [(t["optimizer"], t["lr"]) for t in tuning["supcon"]["trials"]] == \
        [("sgd", 0.0333), ("sgd", 0.1), ("sgd", 0.3), ("adamw", 1e-3)]
    assert tuning == poisoned["tuning"]  # every trial's val accuracy and every choice
    for method, t in tuning.items():
        best = max(trial["val_acc"] for trial in t["trials"])
        assert next(trial for trial in t["trials"] if trial["lr"] == t["lr"])["val_acc"] == best
        saved = Config.from_yaml(tmp_path / "clean" / method / "config.yaml")
        assert (saved.optimizer, saved.lr) == (t["optimizer"], t["lr"])  # the comparison's run trained with the choice
    assert [r["val_acc"] for r in clean["runs"]] == [r["val_acc"] for r in poisoned["runs"]]
    text = (tmp_path / "clean" / "results.md").read_text()
    assert "tuned on val accuracy, seed 0, 4 trials each: SupCon + linear " in text
    from supcon.cli import main

    assert main(["report", str(tmp_path / "clean"), "--out", str(tmp_path / "report.md")]) == 0
    assert "tuned on val accuracy" in (tmp_path / "report.md").read_text()
