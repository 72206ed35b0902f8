import hashlib
import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import QUICK, assert_picture, run_cli

from supcon.config import Config
from supcon.experiments.embeddings import embed_run
from supcon.reporting.format import results_table
from supcon.runs.load import load_encoder
from supcon.stages import train_run

FAST = {**QUICK, "epochs": 1, "linear_epochs": 3}


def _npz(path, channels: int, size: int = 12, classes: int = 3):
    """A small synthetic data set: each class a bright square in its own corner, plus noise."""
    rng = np.random.default_rng(0)

    def split(n):
        y = np.arange(n) % classes
        x = rng.integers(0, 60, (n, size, size, channels), dtype=np.uint8)
        for i, c in enumerate(y):
            x[i, (c % 2) * size // 2:(c % 2 + 1) * size // 2, (c // 2) * size // 2:(c // 2 + 1) * size // 2] = 230
        return x if channels == 3 else x[..., 0], y

    (x_train, y_train), (x_test, y_test) = split(60), split(30)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array([f"c{i}" for i in range(classes)]))
    return f"npz:{path}"


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("pretrain")
    train_run("supcon", Config(**FAST), digits, out, until="pretrain")
    return out


@pytest.fixture(scope="module")
def gray(tmp_path_factory):
    return _npz(tmp_path_factory.mktemp("gray") / "gray12.npz", channels=1)


def _snapshot(directory):
    return {p.relative_to(directory): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_transfer_writes_a_new_run_and_leaves_the_source_alone(pretrain_run, gray, tmp_path, capsys):
    before = _snapshot(pretrain_run)
    out = tmp_path / "to-gray"
    code, text, err = run_cli(capsys, "linear", "--encoder-from", pretrain_run, "--dataset", gray, "--out", out,
                              "--tsne", "--quiet")
    assert code == 0, err
    assert "| SupCon encoder + linear |" in text and f"outputs in {out}" in text
    assert _snapshot(pretrain_run) == before
    for name in ("config.yaml", "results.json", "metrics.jsonl", "encoder.safetensors", "linear.safetensors",
                 "curves.png", "tsne.png"):
        assert (out / name).is_file(), name
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["encoder_from"] == str(pretrain_run) and cfg["dataset"] == gray and cfg["image_size"] == 8
    assert cfg["out"] == str(out) and cfg["run"] is None and cfg["epochs"] == 1  # options start from the source's
    results = json.loads((out / "results.json").read_text())
    run = results["runs"][0]
    assert results["class_names"] == ["c0", "c1", "c2"] and results["input"]["image_size"] == 8
    assert run["encoder_from"] == str(pretrain_run) and run["encoder_dataset"] == "digits"
    # three classes, a bright square in each one's corner: chance is 1/3, and the digits encoder gave 0.67 here
    assert run["val_acc"] > 0.5
    stages = {json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"linear"}
    # the new directory is a run like any other
    encoder, _, inputs = load_encoder(out)
    assert inputs.channels == 1 and encoder.out_dim == 128


def test_transfer_from_a_ce_run_in_python(digits, gray, tmp_path):
    train_run("ce", Config(**FAST), digits, tmp_path / "ce")
    result = train_run("transfer", Config(**{**FAST, "dataset": gray, "encoder_from": str(tmp_path / "ce")}),
                       out=tmp_path / "t")
    # a one-epoch CE encoder is not worth a bound on accuracy here (it measured chance, 1/3): the record is the point
    assert result.summary["method"] == "transfer" and result.summary["encoder_method"] == "ce"
    assert "| cross-entropy encoder + linear |" in results_table([result.summary])


def test_transfer_errors_are_one_line(pretrain_run, tmp_path, capsys):
    rgb, new = _npz(tmp_path / "rgb.npz", channels=3), tmp_path / "new"
    cases = [
        (["--encoder-from", pretrain_run, "--dataset", rgb, "--out", new],
         "takes 1-channel images; npz:rgb has 3 channels"),
        (["--encoder-from", pretrain_run, "--image-size", "16", "--out", new], "takes 8x8 images"),
        (["--encoder-from", tmp_path, "--out", new], "is not a run directory (no results.json)"),
        (["--encoder-from", pretrain_run, "--out", pretrain_run], "needs its own directory"),
        (["--encoder-from", pretrain_run, "--run", pretrain_run], "not both"),
        (["--run", pretrain_run, "--out", new], "--out goes with --encoder-from"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, "linear", *args, "--quiet")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, err)
    assert not new.exists()


def test_embed_exports_embeddings_labels_and_class_names(pretrain_run, gray, tmp_path, capsys):
    path = tmp_path / "emb.npz"
    code, text, err = run_cli(capsys, "embed", pretrain_run, "--projection", "--out", path)
    assert code == 0 and str(path) in text, err
    with np.load(path) as z:
        assert set(z.files) == {f"{split}_{key}" for split in ("train", "val", "test") for key in ("x", "y", "proj")
                                } | {"class_names"}
        assert z["train_x"].shape == (300, 128) and z["val_x"].shape == (150, 128) and z["test_x"].shape == (270, 128)
        assert z["train_proj"].shape == (300, 128) and z["val_y"].shape == (150,)
        assert np.allclose(np.linalg.norm(z["val_x"], axis=1), 1, atol=1e-4)  # SupCon's representation is unit-norm
        assert z["class_names"].tolist() == [str(i) for i in range(10)]
    other = embed_run(pretrain_run, tmp_path / "other.npz", dataset=gray, split="test")
    with np.load(other) as z:
        assert set(z.files) == {"test_x", "test_y", "class_names"} and z["test_x"].shape == (30, 128)
        assert z["class_names"].tolist() == ["c0", "c1", "c2"]


def test_tsne_command_draws_encoder_and_projection(pretrain_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(pretrain_run, run)
    code, text, err = run_cli(capsys, "tsne", run, "--projection")
    assert code == 0, err
    assert_picture(run / "tsne.png") and assert_picture(run / "tsne_projection.png")


def test_tsne_and_embed_need_the_right_run(digits, tmp_path, capsys):
    train_run("ce", Config(**FAST), digits, tmp_path / "ce")
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "config.yaml").write_text("epochs: 1\n")
    (tmp_path / "cmp" / "results.json").write_text(json.dumps({"runs": [{"method": "supcon"},
                                                                          {"method": "ce"}]}))
    cases = [
        (["tsne", tmp_path], "is not a run directory (no results.json)"),
        (["tsne", tmp_path / "ce", "--projection"], "has no projection head"),
        (["tsne", tmp_path / "cmp"], "holds a comparison"),  # a comparison's results without its run folders
        (["embed", tmp_path / "nowhere", "--out", tmp_path / "e.npz"], "is not a run directory (no results.json)"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, err)
