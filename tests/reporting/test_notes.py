"""The plain sentences under a table: stage 1 stalled, never started, stopped early; CE never trained."""

import pytest

from supcon.cli import main
from supcon.io import read_json
from supcon.reporting.notes import ce_note, compare_notes, convergence_note


def test_ce_that_never_trained_is_called_out(tmp_path, capsys):
    """A CE baseline at chance (the study's, at 0.25 on five classes) gets a note; a trained one does not."""
    # digits, SGD at 1e-9: the network never moves, so it scores what one guessed class scores
    assert main(["ce", "--epochs", "1", "--optimizer", "sgd", "--lr", "1e-9", "--max-train", "200", "--quiet",
                 "--out", str(tmp_path / "ce")]) == 0
    summary = read_json(tmp_path / "ce" / "results.json")["runs"][0]
    assert summary["val_chance"] == pytest.approx(0.104, abs=0.001)  # the largest of the 10 digit classes
    out = capsys.readouterr().out
    assert f"Cross-entropy never trained: its validation accuracy ({summary['val_acc']:.3f}) stayed at chance" in out
    trained = {"method": "ce", "val_acc": 0.75, "val_chance": 0.2}
    assert ce_note(trained) is None and ce_note({**trained, "val_acc": 0.248}).startswith("Cross-entropy never")
    assert ce_note({"method": "supcon", "val_acc": 0.2, "val_chance": 0.2}) is None
    assert ce_note({"method": "ce", "val_acc": 0.2}) is None  # results written before val_chance existed
    # the advice is the run's own: it says what the run used, and suggests only what would change something
    assert "this run: SGD at 1e-09" in out and "--warmup-epochs" in out and "leave --optimizer at auto" in out
    at_chance = {"method": "ce", "val_acc": 0.2, "val_chance": 0.2}
    adamw = ce_note({**at_chance, "optimizer": "adamw", "lr": 1e-3, "warmup_epochs": 2.0})
    assert "this run: AdamW at 0.001" in adamw and "AdamW" not in adamw.split("this run: AdamW")[1]
    assert "--warmup-epochs" not in adamw and "--optimizer" not in adamw


def test_convergence_note_speaks_only_when_stage1_stalled():
    run = {"method": "supcon", "stage1_loss_start": 5.5, "stage1_loss": 5.2, "stage1_loss_floor": 3.9,
           "stage1_progress": 0.3 / 1.6}
    note = convergence_note(run)
    assert note.startswith("Stage 1 did not converge: its loss went from 5.500 to 5.200, only 19% of the way")
    assert "may change with more --epochs" in note
    assert convergence_note({**run, "stage1_progress": 0.8}) is None
    assert convergence_note({"method": "ce", "stage1_progress": None}) is None
    # the kNN monitor saw the features stop improving half-way: then more epochs is not the suggestion
    stalled = {**run, "knn_curve": [[0, 0.3], [1, 0.6], [2, 0.61], [3, 0.61], [4, 0.61], [5, 0.61], [6, 0.61]]}
    note = convergence_note(stalled)
    assert "stopped improving early" in note and "more --epochs" not in note


def test_notes_of_several_forms_name_the_form_they_are_about():
    stalled = {"method": "supcon", "stage1_loss_start": 5.5, "stage1_loss": 5.2, "stage1_loss_floor": 3.9,
               "stage1_progress": 0.3 / 1.6}
    ce = {"method": "ce", "val_acc": 0.8, "val_chance": 0.2}
    alone = compare_notes([stalled, ce])
    assert alone.startswith("Stage 1 did not converge")  # one form: nothing to tell apart
    several = compare_notes([stalled, {"method": "supcon+ce", "stage1_progress": 0.9}, ce])
    assert several.startswith("SupCon + linear: Stage 1 did not converge") and "joint" not in several
