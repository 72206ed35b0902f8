import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import QUICK, assert_picture, flags, run_cli

from supcon.cli import build_parser, main
from supcon.config import Config, fields_for

PICTURED_FLAGS = flags({k: v for k, v in QUICK.items() if k not in ("dataset", "tsne")})  # with tsne.png


@pytest.mark.parametrize("command", ["pretrain", "linear", "ce", "compare", "sweep"])
def test_help_documents_every_option_with_its_default(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in fields_for(command):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
    assert "(default: digits)" in text or command == "linear"
    assert "--config FILE" in text


@pytest.mark.parametrize("command, options", [
    ("tsne", ["RUN_DIR", "--projection"]),
    ("embed", ["RUN_DIR", "--dataset SPEC", "--split {train,val,test,all}", "--projection", "--out FILE"]),
    ("predict", ["RUN_DIR", "PATH", "--top-k K", "--format {text,json,csv}", "--batch-size N", "--device DEVICE",
                 "--quiet", "(default: text)"]),
    ("report", ["DIR", "--out FILE", "(default: report.md, unless --html is given)", "--html FILE", "--map-points N",
                "(default: 1000)"]),
    ("knn", ["RUN_DIR", "--dataset SPEC", "--k K", "--temperature T", "--weights {exp,uniform}", "(default: exp)"]),
])
def test_help_of_the_run_directory_commands(command, options, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(option in text for option in options), text


def test_python_dash_m_and_version():
    result = subprocess.run([sys.executable, "-m", "supcon", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("supcon ")


@pytest.mark.parametrize("args, message", [
    (["ce", "--dataset", "imagenet:/nowhere"], "unknown data set 'imagenet:/nowhere'; valid forms: digits"),
    (["ce", "--dataset", "npz:/nowhere/x.npz"], "not found"),
    (["pretrain", "--temperature", "0"], "temperature must be positive"),
    (["compare", "--val-fraction", "2"], "val_fraction must be between 0 and 1"),
    (["linear"], "linear needs --run DIR"),
    (["linear", "--run", "/nowhere"], "/nowhere is not a run directory (no results.json)"),
    (["tsne", "/nowhere"], "/nowhere is not a run directory (no results.json)"),
    (["embed", "/nowhere", "--out", "/nowhere/e.npz"], "/nowhere is not a run directory (no results.json)"),
    (["report", "/nowhere"], "/nowhere is not a run directory (no results.json)"),
    (["knn", "/nowhere"], "/nowhere is not a run directory (no results.json)"),
    (["pretrain", "--knn-every", "sometimes"], "knn_every must be auto or a whole number of epochs"),
    (["ce", "--device", "tpu"], "device must be"),
    (["ce", "--config", "/nowhere.yaml"], "config file not found"),
])
def test_bad_input_gives_a_one_line_error(args, message, capsys):
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], err
    assert "Traceback" not in err


def test_yaml_config_with_an_unused_key_lists_the_valid_ones(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"epochs": 1, "temperature": 0.5}))
    code, _, err = run_cli(capsys, "ce", "--config", str(path))
    assert code == 2 and "not used by 'ce'" in err and "temperature" in err and "valid options:" in err


def test_bad_images_in_a_folder_are_skipped_and_counted(tmp_path, capsys):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.new("RGB", (8, 8), (40 * i, 200 if c == "a" else 0, 0)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    code, out, _ = run_cli(capsys, "ce", "--dataset", f"folder:{tmp_path}", "--epochs", "1", "--val-fraction", "0.3",
                           "--out", str(tmp_path / "run"), "--batch-size", "4")
    assert code == 0
    assert "1 unreadable" in out
    assert "broken.png\t" in (tmp_path / "run" / "skipped_images.txt").read_text()


def test_flags_override_the_yaml_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"epochs": 5, "lr": 0.01, "max_train": 200, "max_val": 100}))
    out = tmp_path / "run"
    code, _, _ = run_cli(capsys, "ce", "--config", str(path), "--epochs", "1", "--out", str(out), "--quiet",
                         "--no-tsne")
    assert code == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["lr"] == 0.01 and saved["out"] == str(out)


def test_pretrain_then_linear(tmp_path, capsys):
    out = tmp_path / "run"
    code, text, _ = run_cli(capsys, "pretrain", *PICTURED_FLAGS[:6], "--quiet", "--out", str(out))
    assert code == 0 and f"supcon linear --run {out}" in text
    assert (out / "curves.png").is_file() and (out / "tsne.png").is_file()
    code, text, _ = run_cli(capsys, "linear", "--run", str(out), "--linear-epochs", "3", "--quiet")
    assert code == 0 and "| SupCon + linear |" in text
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["linear_epochs"] <= 3 and (run["method"], run["stage2"]) == ("supcon", "linear")


def test_compare_on_digits_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, text, _ = run_cli(capsys, "compare", *PICTURED_FLAGS, "--out", str(out))
    assert code == 0
    assert ("| method | test acc (95% CI) | val acc | stage-1 loss | kNN acc | train acc | optimizer steps "
            "| time per seed |") in text
    assert f"outputs (results.json, results.md, tsne.png, ce/, supcon/) in {out}" in text
    for name in ("config.yaml", "results.json", "results.md", "tsne.png"):
        assert (out / name).is_file(), name
    for run_dir, weights in (("ce", ("encoder", "linear")), ("supcon", ("encoder", "projection", "linear"))):
        for w in weights:
            assert (out / run_dir / f"{w}.safetensors").is_file()
        assert (out / run_dir / "curves.png").is_file() and (out / run_dir / "tsne.png").is_file()
        assert (out / run_dir / "metrics.jsonl").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "digits"
    assert [r["method"] for r in results["runs"]] == ["supcon", "ce"]
    for run in results["runs"]:
        assert set(run) >= {"method", "val_acc", "train_acc", "stage1_loss", "epochs", "seconds"}
        assert isinstance(run["val_acc"], float) and isinstance(run["epochs"], int)
    assert results["runs"][1]["stage1_loss"] is None and results["runs"][0]["stage1_loss"] > 0
    stalled = results["runs"][0]["stage1_progress"] < 0.5  # two epochs: usually not converged, said plainly
    assert ("Stage 1 did not converge" in (out / "results.md").read_text()) == stalled
    assert ("Stage 1 did not converge" in text) == stalled


@pytest.mark.slow
def test_default_compare_on_digits_beats_90_percent(tmp_path, capsys):
    """The README's main command: defaults only (30 epochs), both methods must reach 0.90."""
    code, text, _ = run_cli(capsys, "compare", "--out", str(tmp_path), "--quiet", "--no-tsne")
    assert code == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert all(run["val_acc"] >= 0.90 for run in runs), runs


@pytest.mark.slow
def test_compare_on_real_photos_beats_chance(shared_data, tmp_path, capsys):
    """ImageNet-5 (5 classes, chance 0.2) at 32 px, ResNet-18, 6 epochs: both methods must clear 0.4."""
    code, _, _ = run_cli(capsys, "compare", "--dataset", f"npz:{shared_data / 'imagenet5_64.npz'}", "--image-size",
                         "32", "--encoder", "resnet18", "--stem", "imagenet", "--epochs", "6", "--batch-size", "64",
                         "--out", str(tmp_path), "--quiet")
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["dataset"] == "npz:imagenet5_64"
    for run in results["runs"]:
        assert run["val_acc"] > 0.4, run
    assert_picture(tmp_path / "tsne.png", panels=2)  # SupCon's encoder beside CE's


def test_runs_repeat_exactly_across_processes_with_one_thread(tmp_path):
    """Seeded runs are bit-for-bit repeatable on CPU with one thread (with more, reductions may reorder)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    losses = []
    for i in range(2):
        out = tmp_path / str(i)
        subprocess.run([sys.executable, "-m", "supcon", "pretrain", "--max-train", "200", "--epochs", "1",
                        "--batch-size", "64", "--quiet", "--no-tsne", "--out", str(out)], check=True, env=env,
                       capture_output=True)
        losses.append(json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"])
    assert losses[0] == losses[1]


def test_compare_with_seeds_prints_the_interval_table_and_the_verdict(tmp_path, capsys):
    import re

    code, out, _ = run_cli(capsys, "compare", *flags({**QUICK, "epochs": 1, "linear_epochs": 3}), "--seeds", "3",
                           "--out", tmp_path)
    assert code == 0
    assert "| method | test acc (95% CI) | val acc |" in out and out.count(" ± ") == 2
    line = re.search(r"(no significant difference|SupCon better|cross-entropy better) at this budget: SupCon − CE = "
                     r"([+−]\d+\.\d) points, 95 % CI \[([+−]\d+\.\d), ([+−]\d+\.\d)\] \(two-level t-interval over 3 "
                     r"seeds and 270 test images\)", out)
    assert line, out
    low, mid, high = (float(line[i].replace("−", "-")) for i in (3, 2, 4))
    assert low <= mid <= high
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["seeds"] == [0, 1, 2] and results["splits"] == {"train": 300, "val": 150, "test": 270}
    for method in ("supcon", "ce"):
        line = results["methods"][method]
        assert [p["seed"] for p in line["per_seed"]] == [0, 1, 2]
        assert line["test_acc"] == pytest.approx(sum(p["test_acc"] for p in line["per_seed"]) / 3)
        assert line["test_acc_ci"][0] <= line["test_acc"] <= line["test_acc_ci"][1]
    difference = results["difference"]
    assert difference["verdict"] in ("supcon_better", "ce_better", "no_significant_difference")
    assert difference["ci"] == pytest.approx([low / 100, high / 100], abs=5e-4)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["seed-0", "seed-1", "seed-2"]
    assert (tmp_path / "results.md").read_text().count(" ± ") == 2


@pytest.mark.parametrize("args, message", [
    (["compare", "--lr", "abc"], "supcon compare: error: --lr: expected a number, got 'abc' (see supcon compare"),
    (["pretrain", "--epochs"], "supcon pretrain: error: --epochs: expected a value after it"),
    (["compare", "--epoch", "3"], "unrecognized argument --epoch; did you mean --epochs?"),  # never abbreviated
    (["ce", "--temperature", "0.1"], "unrecognized argument --temperature"),  # a stage-1 option
    (["ce", "--batch-size", "many"], "--batch-size: expected a whole number, got 'many'"),
    (["compare", "--loss", "dino"], "--loss: expected one of 'supcon', 'supcon_in'"),
    (["knn"], "the following arguments are required: RUN_DIR"),
    (["predict", "--top-k", "x", "RUN", "IMG"], "--top-k: expected a whole number, got 'x'"),
    (["compare", "--optimzer", "sgd"], "did you mean --optimizer?"),
    ([], "supcon: error: the following arguments are required: COMMAND"),
])
def test_a_bad_command_line_is_one_line_naming_the_flag(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert "usage:" not in err


# The tool commands' options that are also the Config's, under the Config's name.
SHARED = {"batch_size": "eval_batch_size", "device": "device", "seed": "seed", "quiet": "quiet"}


@pytest.mark.parametrize("command, positional", [("predict", ["RUN", "IMG"]), ("knn", ["RUN"]),
                                                 ("embed", ["RUN", "--out", "e.npz"]), ("robustness", ["RUN"])])
def test_the_tool_commands_and_the_config_agree_on_every_shared_default(command, positional):
    args = build_parser().parse_args([command, *positional])
    config = Config()
    shared = {name: of for name, of in SHARED.items() if hasattr(args, name)}
    assert shared, f"{command} shares no option with the Config"
    assert {name: getattr(args, name) for name in shared} == {name: getattr(config, of) for name, of in shared.items()}


def test_progress_in_a_log_file_is_plain_lines_not_bars(tmp_path):
    """stderr to a file (a batch job, nohup, CI): one line an epoch, no carriage returns or escape codes."""
    import subprocess
    import sys

    log = tmp_path / "stderr.log"
    with open(log, "w") as fh:
        done = subprocess.run([sys.executable, "-m", "supcon", "pretrain", "--max-train", "200", "--max-val", "100",
                               "--epochs", "2", "--batch-size", "64", "--no-tsne", "--out", str(tmp_path / "run")],
                              stdout=subprocess.DEVNULL, stderr=fh, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text and "\x1b" not in text
    lines = [line for line in text.splitlines() if line.startswith("pretrain: epoch")]
    assert [line.split()[2] for line in lines] == ["1/2", "2/2"]
    assert "loss" in lines[0] and "img/s" in lines[0] and "left" in lines[0]
