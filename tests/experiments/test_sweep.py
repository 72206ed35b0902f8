import csv
import json
import math
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import assert_picture, supcon_argv

from supcon.cli import main
from supcon.config import Config
from supcon.experiments.sweep import STUDY_GRID, Sweep, parse_axis, parse_variant, run_sweep, table_rows
from supcon.reporting.sweep import describe_cell

TINY = dict(dataset="digits", encoder="smallcnn", max_train=200, max_val=100, epochs=1, linear_epochs=2,
            batch_size=64, quiet=True, tsne=False)
TINY_FLAGS = ["--dataset", "digits", "--encoder", "smallcnn", "--max-train", "200", "--max-val", "100",
              "--epochs", "1", "--linear-epochs", "2", "--batch-size", "64", "--quiet", "--no-tsne"]


def test_the_default_grid_is_the_study_grid_plus_ce_per_optimizer():
    cells = Sweep(Config(augment="autoaugment")).cells()
    supcon = [c for c in cells if c[1] == "supcon"]
    ce = [c for c in cells if c[1] == "ce"]
    assert len(supcon) == 12 and len(ce) == 3
    assert {c[2].augment for c in supcon} == {"none", "autoaugment"}  # None in the grid: the base policy
    assert {(c[2].optimizer, c[2].schedule) for c in supcon} == {(o, s) for o in STUDY_GRID["optimizer"]
                                                                   for s in ("fixed", "cosine")}
    assert sorted(c[2].optimizer for c in ce) == ["adam", "rmsprop", "sgd"]
    assert len({c[0] for c in cells}) == 15
    assert Sweep(Config(), ce_grid={}).cells()[-1][1] == "supcon"


def test_row_labels_follow_the_study():
    cfg = Config(optimizer="rmsprop", schedule="cosine", augment="none")
    assert describe_cell("supcon", cfg, ["optimizer", "schedule", "augment"]) == \
        "RMSprop + lr decayed (cosine) + without augmentation"
    assert describe_cell("ce", cfg.replace(augment="simclr"), ["optimizer", "augment", "temperature"]) == \
        "CE: RMSprop + with augmentation (simclr) + temperature=0.1"


def test_parse_axis_converts_and_rejects():
    assert parse_axis("optimizer=sgd,adam") == ("optimizer", ["sgd", "adam"])
    assert parse_axis("temperature=0.1,0.5") == ("temperature", [0.1, 0.5])
    assert parse_axis("batch-size=64") == ("batch_size", [64])
    assert parse_axis("lr=none,0.01") == ("lr", [None, 0.01])
    assert parse_axis("hflip=true,false") == ("hflip", [True, False])
    for bad, message in (("optimizer", "KEY=VALUE"), ("colour=red", "unknown sweep axis"),
                         ("epochs=ten", "takes int")):
        with pytest.raises(ValueError, match=message):
            parse_axis(bad)
    with pytest.raises(ValueError, match="unknown sweep axis"):
        Sweep(Config(), grid={"colour": ["red"]})
    with pytest.raises(ValueError, match="non-empty list"):
        Sweep(Config(), grid={"optimizer": "sgd"})


def test_a_sweep_writes_the_study_table_and_skips_finished_cells(tmp_path):
    sweep = Sweep(Config(**TINY), grid={"optimizer": ["sgd", "adam"], "augment": ["none"]},
                  ce_grid={"optimizer": ["adam"]})
    logs = []
    rows = run_sweep(sweep, tmp_path, log=logs.append)
    assert [r["method"] for r in rows] == ["supcon", "supcon", "ce"]
    # one epoch of each: the cells finished and were measured (their accuracy at this budget is not the point)
    assert all(r["seeds"] == 1 and r["val_acc"] is not None and r["train_acc"] is not None for r in rows)
    assert all(r["knn_acc"] > 0.5 for r in rows[:2])  # chance is 0.11; an untrained CNN's features give about 0.9
    assert rows[0]["stage1_loss"] is not None and rows[2]["stage1_loss"] is None
    table = (tmp_path / "sweep.md").read_text()
    assert table.startswith("| Optimizer + lr strategy + augmentation | stage-1 loss | kNN acc | train acc | val acc |")
    assert "| SGD + without augmentation |" in table and "| CE: Adam |" in table
    with open(tmp_path / "sweep.csv") as fh:
        assert [r["cell"] for r in csv.DictReader(fh)] == [r["cell"] for r in rows]
    assert_picture(tmp_path / "sweep.png", colours=4)
    assert not (tmp_path / "tsne.png").exists()  # TINY has tsne off
    assert (tmp_path / "cells" / "supcon-sgd-none" / "encoder.safetensors").is_file()

    stamp = (tmp_path / "cells" / "ce-adam" / "results.json").stat().st_mtime_ns
    logs.clear()
    again = run_sweep(sweep, tmp_path, log=logs.append)
    assert logs[0] == "sweep: 3 cells, 3 already finished, 0 to run"
    assert [r["val_acc"] for r in again] == [r["val_acc"] for r in rows]
    assert (tmp_path / "cells" / "ce-adam" / "results.json").stat().st_mtime_ns == stamp

    # A changed option makes the finished cells stale: an error naming the option, since redoing them would delete
    # their results, unless redo=True.
    changed = Sweep(Config(**{**TINY, "epochs": 2}), sweep.grid, {})
    with pytest.raises(ValueError, match=r"finished with other options \(epochs: 1 -> 2\).*--redo"):
        run_sweep(changed, tmp_path, log=logs.append)
    assert (tmp_path / "cells" / "ce-adam" / "results.json").stat().st_mtime_ns == stamp  # nothing was touched
    logs.clear()
    run_sweep(changed, tmp_path, log=logs.append, redo=True)
    assert logs[0] == "sweep: 2 cells, 0 already finished, 2 to run"


def test_a_sweep_killed_with_sigkill_resumes_without_redoing_finished_cells(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", *TINY_FLAGS, "--out", str(out), "--grid", "optimizer=adam,sgd,rmsprop", "--grid",
            "augment=none", "--no-ce"]
    # a SignalAt callback kills the process in the second cell's stage 1, after its third step
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    killed = subprocess.run(supcon_argv(*args, signal_at="SIGKILL:3:pretrain:2"), capture_output=True, text=True,
                            env=env, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    first = out / "cells" / "supcon-adam-none" / "results.json"
    assert json.loads(first.read_text())["runs"][0]["val_acc"] is not None
    assert not (out / "cells" / "supcon-sgd-none" / "results.json").exists()
    stamp = first.stat().st_mtime_ns
    loud = [a for a in args if a != "--quiet"]  # the log says how many cells were already finished
    result = subprocess.run(supcon_argv(*loud), capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "sweep: 3 cells, 1 already finished, 2 to run" in result.stdout
    assert first.stat().st_mtime_ns == stamp
    table = (out / "sweep.md").read_text()
    assert table.count("| RMSprop") == 1 and "not run yet" not in table


def test_sweep_cli_reads_a_grid_file_and_prints_the_table(tmp_path, capsys):
    spec = tmp_path / "grid.yaml"
    spec.write_text("epochs: 1\ngrid:\n  temperature: [0.1, 0.5]\nce_grid: {}\n")
    code = main(["sweep", "--config", str(spec), *TINY_FLAGS, "--out", str(tmp_path / "s")])
    out = capsys.readouterr().out
    assert code == 0 and "| temperature=0.1 |" in out and "| temperature=0.5 |" in out
    assert sorted(p.name for p in (tmp_path / "s" / "cells").iterdir()) == ["supcon-0.1", "supcon-0.5"]
    spec.write_text("grid: [optimizer]\n")
    assert main(["sweep", "--config", str(spec), *TINY_FLAGS]) == 2
    assert "grid must be a mapping" in capsys.readouterr().err
    assert main(["sweep", *TINY_FLAGS, "--grid", "colour=red"]) == 2
    assert "unknown sweep axis 'colour'" in capsys.readouterr().err


def test_variants_make_one_cell_each_on_top_of_every_grid_combination(tmp_path, capsys):
    sweep = Sweep(Config(), grid={"optimizer": ["sgd", "adam"]}, ce_grid={},
                  variants=[{}, {"temperature": 0.5}, {"lr": 0.3, "warmup_epochs": 2.0}])
    cells = sweep.cells()
    assert [c[0] for c in cells] == ["supcon-sgd-base", "supcon-sgd-temperature_0.5",
                                     "supcon-sgd-lr_0.3_warmup_epochs_2", "supcon-adam-base",
                                     "supcon-adam-temperature_0.5",
                                     "supcon-adam-lr_0.3_warmup_epochs_2"]
    assert (cells[2][2].lr, cells[2][2].warmup_epochs, cells[2][2].temperature) == (0.3, 2.0, 0.1)
    assert [r["setting"] for r in table_rows(sweep, {})][:3] == ["SGD + base", "SGD + temperature=0.5",
                                                                 "SGD + lr=0.3, warmup_epochs=2.0"]
    with pytest.raises(ValueError, match="unknown option 'colour'"):
        Sweep(Config(), variants=[{"colour": "red"}])
    with pytest.raises(ValueError, match="temperature"):
        Sweep(Config(), variants=[{"temperature": -1.0}])
    assert parse_variant("base") == {} and parse_variant("lr=0.3,batch-size=64") == {"lr": 0.3, "batch_size": 64}
    # the flags: no grid, two variants, no CE
    code = main(["sweep", *TINY_FLAGS, "--grid", "seed=0", "--variant", "base", "--variant", "temperature=0.5",
                 "--no-ce", "--out", str(tmp_path)])
    assert code == 0 and "| seed=0 + temperature=0.5 |" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["supcon-0-base", "supcon-0-temperature_0.5"]


def test_a_diverging_cell_is_recorded_as_failed_and_not_retried(tmp_path):
    sweep = Sweep(Config(**{**TINY, "optimizer": "sgd", "lr": 1e12, "schedule": "fixed"}),
                  grid={"temperature": [0.1]}, ce_grid={})
    rows = run_sweep(sweep, tmp_path, log=lambda m: None)
    assert rows[0]["val_acc"] is None and "loss became" in rows[0]["error"]
    assert "| failed: pretrain: the loss became" in (tmp_path / "sweep.md").read_text()
    logs = []
    run_sweep(sweep, tmp_path, log=logs.append)
    assert logs[0] == "sweep: 1 cells, 1 already finished, 0 to run"


@pytest.mark.parametrize("spec", sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_the_committed_experiment_files_are_valid_sweeps(spec):
    from supcon.cli import build_parser
    from supcon.cli.commands import config_from_args

    args = build_parser().parse_args(["sweep", "--config", str(spec)])
    cells = Sweep.from_options(config_from_args(args), args.config).cells()
    axes = yaml.safe_load(spec.read_text())
    # the study's grid (12 SupCon cells and CE under 3 optimizers) unless the file gives its own
    variants = len(axes.get("variants", [])) or 1
    supcon = math.prod(len(v) for v in axes["grid"].values()) * variants if axes.get("grid") or "variants" in axes \
        else 0
    expected = supcon + math.prod(len(v) for v in axes["ce_grid"].values()) if "grid" in axes else 15
    assert len(cells) == expected and cells[0][2].dataset.startswith(("npz:../shared/data/", "folder:../shared/data/"))


def test_a_sweep_draws_its_best_supcon_and_ce_cells_side_by_side(tmp_path):
    sweep = Sweep(Config(**{**TINY, "tsne": True}), grid={"temperature": [0.1]}, ce_grid={"optimizer": ["adam"]})
    run_sweep(sweep, tmp_path, log=lambda m: None)
    assert_picture(tmp_path / "tsne.png", panels=2)
    # weights deleted after the cells finished (a run directory kept without them): the sweep still ends, and says
    # why the picture is not redrawn
    for weights in (tmp_path / "cells").rglob("encoder.safetensors"):
        weights.unlink()
    (tmp_path / "tsne.png").unlink()
    said = []
    rows = run_sweep(sweep, tmp_path, log=said.append)
    assert len(rows) == 2 and not (tmp_path / "tsne.png").exists()
    assert any(m.startswith("tsne.png not drawn: weights not found") for m in said)
