"""The plain sentences under a table: whether stage 1 converged, never started or stopped early (from its loss
and its kNN monitor), and whether the cross-entropy baseline trained at all."""

from __future__ import annotations

from typing import Any

from supcon.methods import LOSS_TITLES, run_title
from supcon.reporting.format import OPTIMIZER_TITLES, answer_lines, comparison_rows, markdown_table, results_table

# What the kNN monitor must show before compare speaks. "No gain" is less than FLAT (5 images of a 250-image
# validation split) or, near the top, less than a tenth of the way left to 1 (an untrained CNN already scores 0.94
# on digits); an accuracy within AT_CHANCE of the way from chance to 1 is "at chance".
FLAT = 0.02
AT_CHANCE = 0.1


def _tolerance(accuracy: float) -> float:
    return min(FLAT, AT_CHANCE * (1 - accuracy))


def knn_note(run: dict[str, Any]) -> str | None:
    """A plain sentence when the kNN monitor shows that stage 1 never started or stopped improving early.

    Reads the run's ``knn_curve`` (``[epoch, accuracy]`` pairs, epoch 0 the untrained encoder) and
    ``knn_chance`` (what always guessing the largest class scores). Never started: the best accuracy stays
    near chance, or does not rise measurably (:func:`_tolerance`) above the untrained encoder's. Stopped
    early: the accuracy came that close to its best in the first half of the epochs and gained nothing after.
    """
    curve, chance = run.get("knn_curve") or [], run.get("knn_chance")
    if run.get("method") == "ce" or len(curve) < 2:
        return None
    epochs = [int(e) for e, _ in curve]
    accs = [a for _, a in curve]
    best, last, init = max(accs[1:]), accs[-1], accs[0] if epochs[0] == 0 else None
    span = f"epochs {epochs[1]}-{epochs[-1]}" if len(epochs) > 2 else f"epoch {epochs[-1]}"
    if chance is not None and best < chance + AT_CHANCE * (1 - chance):
        return (f"Stage 1 never started: the kNN accuracy of its encoder stayed at chance (best {best:.3f} over "
                f"{span}; always guessing the largest class scores {chance:.3f}), so the encoder learned nothing a "
                f"classifier can use; lower --lr{_rate(run)}, or try another --loss, before reading the probe's "
                "accuracy.")
    if init is not None and best < init + _tolerance(init):
        return (f"Stage 1 never started: the kNN accuracy of its encoder never rose above the untrained encoder's "
                f"({init:.3f} before training, best {best:.3f} over {span}), so stage 1 did not improve the "
                "features; whatever the probe reaches, the random initialisation gave it.")
    tolerance = _tolerance(best)
    reached = next(e for e, a in zip(epochs, accs, strict=True) if e > 0 and a >= best - tolerance)
    if len(epochs) >= 4 and reached <= epochs[-1] / 2:
        return (f"Stage 1 stopped improving early: the kNN accuracy of its encoder came within {tolerance:.3f} of "
                f"its best ({best:.3f}) by epoch {reached} of {epochs[-1]} and ended at {last:.3f}: the second half of "
                "the budget did not make the features better.")
    return None


def _rate(run: dict[str, Any]) -> str:
    """`` (this run: SGD at 0.1)``, where the run recorded what it trained with; empty for older runs."""
    optimizer, lr = run.get("optimizer"), run.get("lr")
    return f" (this run: {OPTIMIZER_TITLES.get(optimizer, optimizer)} at {lr:g})" if optimizer and lr else ""


def ce_note(run: dict[str, Any]) -> str | None:
    """A plain sentence when the cross-entropy baseline never trained: its validation accuracy stayed at chance
    (``val_chance``, what always guessing the largest class scores), as our ResNet-50 under SGD at 0.1 did. The
    advice is the run's own: it names the optimizer and rate the run used, and suggests a warm-up or AdamW only
    where the run had none."""
    chance, acc = run.get("val_chance"), run.get("val_acc")
    if run.get("method") != "ce" or chance is None or acc is None or acc >= chance + AT_CHANCE * (1 - chance):
        return None
    optimizer, warmup = run.get("optimizer"), run.get("warmup_epochs")
    advice = [f"check --lr{_rate(run)}, since too high diverges in the first epoch (as SGD at 0.1 can on a deep "
              "encoder trained from scratch) and too low never moves"]
    if not warmup:  # None (a run written before this was recorded) or 0
        advice.append("add --warmup-epochs")
    if optimizer != "adamw":
        advice.append("leave --optimizer at auto, which trains CE with AdamW")
    return (f"Cross-entropy never trained: its validation accuracy ({acc:.3f}) stayed at chance (always guessing "
            f"the largest class scores {chance:.3f}), so it is no baseline to compare with; "
            f"{'; '.join(advice[:-1]) + '; or ' + advice[-1] if len(advice) > 1 else advice[0]}.")


def compare_notes(runs: list[dict[str, Any]]) -> str | None:
    """The notes of a comparison's runs (:func:`convergence_note` for SupCon, :func:`ce_note` for CE), or None."""
    notes = [convergence_note(run) if run.get("method") != "ce" else ce_note(run) for run in runs]
    contrastive = sum(run.get("method") != "ce" for run in runs)
    if contrastive > 1:  # several forms of SupCon: say whose stage 1 a note is about
        notes = [f"{run_title(run)}: {note}" if note else None
                 for run, note in zip(runs, notes, strict=True)]
    return " ".join(n for n in notes if n) or None


def convergence_note(run: dict[str, Any], threshold: float = 0.5) -> str | None:
    """Plain sentences when stage 1 stopped far from converged, never started or stopped improving early, else
    None.

    Progress is how far the loss fell from its first batch towards its floor (the loss when each class has
    collapsed to one point): a SupCon encoder whose loss barely moved was not given the budget it needs, and
    its probe says little about the method. The kNN monitor (:func:`knn_note`) says what the features did
    meanwhile, which the loss alone does not.
    """
    notes = []
    progress = run.get("stage1_progress")
    knn = knn_note(run)
    if run.get("method") != "ce" and progress is not None and progress < threshold:
        name = LOSS_TITLES.get(run.get("loss"), "SupCon")
        # when the kNN monitor says the features stopped improving, more epochs is the wrong advice
        advice = ("" if knn and "stopped improving" in knn else
                  f", so {name} was compared far from convergence; the answer may change with more --epochs (or a "
                  "larger --lr), which is worth a run before reading its accuracy against cross-entropy's")
        notes.append(f"Stage 1 did not converge: its loss went from {run['stage1_loss_start']:.3f} to "
                     f"{run['stage1_loss']:.3f}, only {progress:.0%} of the way to its floor of "
                     f"{run['stage1_loss_floor']:.3f}{advice}.")
    if knn:
        notes.append(knn)
    return " ".join(notes) or None


def comparison_text(results: dict[str, Any]) -> str:
    """A comparison as the terminal and ``results.md`` show it: the table, the verdict, then the notes on its
    first seed's runs (a comparison written before the test split: its per-run table)."""
    if "methods" not in results:
        text, runs = results_table(results["runs"]), results["runs"]
    else:
        text = markdown_table(*comparison_rows(results)) + "".join("\n\n" + line for line in answer_lines(results))
        runs = results["runs"][:len(results["methods"])]
    note = compare_notes(runs)
    return text + ("\n\n" + note if note else "")
