"""RunDir: a run directory's kind, summary and finished stages, for runs written now and by earlier versions."""

from __future__ import annotations

import json

import pytest
from conftest import QUICK, default_sigint

from supcon.cli import main
from supcon.config import Config
from supcon.engine.checkpoint import Checkpoints, load_checkpoint, save_checkpoint
from supcon.runs import RunDir, expand_runs, find_runs
from supcon.runs.load import load_classifier, load_run
from supcon.stages import train_run

TINY = {**QUICK, "max_train": 200, "max_val": 100, "epochs": 1, "linear_epochs": 2, "batch_size": 32,
        "knn_every": "1"}


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    assert main(["compare", *_flags(TINY), "--out", str(out)]) == 0
    return out


def _flags(options: dict) -> list[str]:
    from conftest import flags

    return flags(options)


def _as_written_before(run_dir) -> None:
    """Rewrite a run's summaries with the keys of the versions before the redesign (``supcon_loss``, ...)."""
    for path in run_dir.rglob("results.json"):
        text = path.read_text().replace('"stage1_loss', '"supcon_loss')
        path.write_text(text)


def _outcome(run_dir) -> tuple[list, dict]:
    """What a run computed: its metrics lines and its summary, without the times."""
    lines = [{k: v for k, v in json.loads(x).items() if "seconds" not in k}
             for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = {k: v for k, v in json.loads((run_dir / "results.json").read_text())["runs"][0].items()
               if "seconds" not in k}
    return lines, summary


def test_methods_parts_and_the_classifying_run(compare_dir, tmp_path):
    run = RunDir(compare_dir)
    assert run.method() == "compare" and [p.path.name for p in run.parts()] == ["supcon", "ce"]
    assert RunDir(compare_dir / "ce").method() == "ce" and RunDir(compare_dir / "supcon").method() == "supcon"
    assert RunDir(compare_dir / "supcon").commands() == ("pretrain", "linear") and run.commands() == ("compare",)
    assert run.resolve() == RunDir(compare_dir / "supcon") and run.resolve("ce") == RunDir(compare_dir / "ce")
    assert RunDir(tmp_path).method() is None and RunDir(tmp_path).commands() == ()  # nothing written yet
    with pytest.raises(ValueError, match="holds a comparison, not one run"):
        run.summary()
    assert [name for name, _ in expand_runs([compare_dir])] == [f"{compare_dir.name}/supcon", f"{compare_dir.name}/ce"]
    found = find_runs([compare_dir])
    assert [f.path for f in found] == [compare_dir] and [p.path.name for p in found[0].parts] == ["ce", "supcon"]


def test_results_say_which_machine_computed_them(compare_dir):
    import torch

    for path in [compare_dir / "results.json", *compare_dir.glob("*/results.json")]:
        machine = json.loads(path.read_text())["machine"]
        assert machine["torch"] == torch.__version__ and machine["threads"] == torch.get_num_threads()
        assert isinstance(machine["cpu"], str) and machine["cpu"] and machine["cores"] >= 1
        assert machine["gpu"] is None or isinstance(machine["gpu"], str)


def test_a_run_written_before_the_redesign_still_loads_and_reports(compare_dir, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(compare_dir, old)
    _as_written_before(old)
    assert "supcon_loss" in (old / "supcon" / "results.json").read_text()
    summary = RunDir(old / "supcon").summary()
    assert "supcon_loss" not in summary and summary["stage1_loss"] == pytest.approx(
        RunDir(compare_dir / "supcon").summary()["stage1_loss"])
    assert RunDir(old / "supcon").stage_finished("linear") is not None
    assert load_classifier(old / "ce").classes == [str(i) for i in range(10)]
    assert load_run(old).run_dir == old / "supcon"
    assert main(["knn", str(old / "supcon")]) == 0 and "kNN accuracy" in capsys.readouterr().out
    assert main(["report", str(old), "--out", str(tmp_path / "r.md")]) == 0
    table = (tmp_path / "r.md").read_text()
    assert f"| {summary['stage1_loss']:.4f} |" in table  # the old key's value, under today's column
    assert main(["compare", "--resume", str(old)]) == 0  # both finished: kept, the comparison rewritten
    assert json.loads((old / "results.json").read_text())["runs"][0]["stage1_loss"] == summary["stage1_loss"]


def test_a_checkpoint_written_before_the_redesign_resumes_to_the_same_result(tmp_path):
    """Checkpoints of earlier versions kept the loop's sums as a list; a run killed then still resumes."""
    import os
    import subprocess
    import sys

    from conftest import supcon_argv

    ce_options = {k: v for k, v in TINY.items() if k not in ("linear_epochs", "knn_every")}
    args = ["ce", *_flags({**ce_options, "epochs": 2}), "--ckpt-every", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.run(supcon_argv(*args, "--out", str(tmp_path / "ref")),
                               preexec_fn=default_sigint, env=env,
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "old"
    stopped = subprocess.run(supcon_argv(*args, "--out", str(run), signal_at="SIGINT:9"), preexec_fn=default_sigint,
                             env=env, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 130, stopped.stderr
    state, path = Checkpoints(run, "ce").latest()
    loop = state["loop"]
    old_loop = {"epoch": loop["epoch"], "skip": loop["skip"], "global_step": loop["global_step"],
                "sums": [loop["loss_sum"], loop["seen"], loop["correct"], loop["counted"]],
                "best_score": loop["best_score"], "bad_epochs": loop["bad_epochs"], "seconds": loop["seconds"]}
    save_checkpoint(path, {**state, "loop": old_loop})
    assert "sums" in load_checkpoint(path)["loop"]
    resumed = subprocess.run([sys.executable, "-m", "supcon", "ce", "--resume", str(run)],
                             preexec_fn=default_sigint, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr

    assert _outcome(run) == _outcome(tmp_path / "ref")


def test_a_stage1_checkpoint_of_one_flat_dict_resumes_to_the_same_result(tmp_path):
    """Checkpoints written before stage 1's helpers were callbacks kept their numbers (the progress record, the kNN
    curve, the queue and its momentum copy) in one flat ``extra`` dict; a run killed then still resumes, each
    callback taking its own keys back."""
    import os
    import subprocess

    from conftest import supcon_argv

    stage1_options = {k: v for k, v in TINY.items() if k != "linear_epochs"}
    args = ["pretrain", *_flags({**stage1_options, "epochs": 2}), "--queue", "64", "--momentum-encoder", "0.9",
            "--ckpt-every", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def supcon(*more, signal_at=None):
        return subprocess.run(supcon_argv(*args, *more, signal_at=signal_at), preexec_fn=default_sigint, env=env,
                              capture_output=True, text=True, timeout=600)

    assert supcon("--out", str(tmp_path / "ref")).returncode == 0
    run = tmp_path / "old"
    stopped = supcon("--out", str(run), signal_at="SIGINT:9")  # epoch 2 of 7 steps each
    assert stopped.returncode == 130, stopped.stderr
    state, path = Checkpoints(run, "pretrain").latest()
    assert set(state["callbacks"]) == {"stage1_progress", "knn_monitor", "memory_queue"}
    flat = {key: value for owner in state.pop("callbacks").values() for key, value in owner.items()}
    save_checkpoint(path, {**state, "extra": flat})
    resumed = subprocess.run(supcon_argv("pretrain", "--resume", str(run)), preexec_fn=default_sigint, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr

    assert _outcome(run) == _outcome(tmp_path / "ref")


def test_a_fresh_run_forgets_what_an_earlier_run_left_in_its_directory(digits, tmp_path):
    """A first stage's record waits in checkpoints/ until its run finishes; a new run there must not read it."""
    run = RunDir(tmp_path)
    cfg = Config(**{**TINY, "epochs": 1})
    train_run("supcon", cfg, digits, tmp_path, until="pretrain")
    run.mark_stage_finished("pretrain", {"runs": [{"method": "supcon"}], "input": {}})
    assert run.stage_finished("pretrain") == {"method": "supcon"}
    train_run("ce", cfg, digits, tmp_path)
    assert run.method() == "ce" and run.stage_finished("pretrain") is None


def test_run_files_get_the_mode_of_the_umask_not_mkstemps_0600(digits, tmp_path):
    """A shared results folder must be readable by the group: every file a run writes (atomically, through a
    temporary file) gets the mode a new file gets under the process's umask, checkpoints included."""
    import os
    import stat

    from supcon.engine.checkpoint import save_checkpoint

    before = os.umask(0o022)
    try:
        train_run("ce", Config(**{**TINY, "epochs": 1, "tsne": True}), digits, tmp_path / "run")
        save_checkpoint(tmp_path / "run" / "checkpoints" / "ce-epoch0001.pt", {"loop": {}})
        os.umask(0o027)  # another umask, another mode: the mode follows it
        save_checkpoint(tmp_path / "strict.pt", {"loop": {}})
    finally:
        os.umask(before)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"results.json", "metrics.jsonl", "config.yaml", "encoder.safetensors", "tsne.png",
            "ce-epoch0001.pt"} <= names, names
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE((tmp_path / "strict.pt").stat().st_mode) == 0o640


def test_every_command_reading_a_model_takes_a_compare_folder(compare_dir, tmp_path, capsys):
    """knn, tsne, embed and predict resolve a compare folder (and one seed's folder of it) the same way: its
    SupCon run by default, --method to choose, a one-line error listing the methods there otherwise."""
    import shutil

    home = tmp_path / "cmp"
    shutil.copytree(compare_dir, home)
    assert main(["knn", str(home)]) == 0
    assert f"encoder of {home}" in capsys.readouterr().out
    assert main(["knn", str(home), "--method", "ce"]) == 0
    assert main(["tsne", str(home)]) == 0 and (home / "supcon" / "tsne.png").is_file()
    assert main(["embed", str(home), "--method", "ce", "--split", "val", "--out", str(tmp_path / "e.npz")]) == 0
    capsys.readouterr()
    assert main(["knn", str(home), "--method", "simclr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"supcon knn: error: {home} has no simclr run; --method must be one of supcon, ce"]
    seeds = tmp_path / "seeds"
    shutil.copytree(compare_dir, seeds / "seed-3")
    shutil.copy(compare_dir / "config.yaml", seeds / "config.yaml")  # a multi-seed compare's own, at its top
    assert RunDir(seeds).resolve() == RunDir(seeds / "seed-3" / "supcon")
    assert RunDir(seeds / "seed-3").resolve("ce") == RunDir(seeds / "seed-3" / "ce")
    with pytest.raises(ValueError, match="is a ce run, not supcon"):
        RunDir(home / "ce").resolve("supcon")
