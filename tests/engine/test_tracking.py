import struct
import sys

import numpy as np
import pytest
import torch
from conftest import QUICK

from supcon.augment import Inputs
from supcon.cli import main
from supcon.config import Config
from supcon.data import load_dataset
from supcon.engine.tracking import Tracker, open_tracker
from supcon.evaluate.inference import outputs
from supcon.evaluate.tsne import tsne_subset
from supcon.models import build_encoder
from supcon.stages import train_run
from supcon.stages.pictures import log_projector

SMALLCNN = {**QUICK, "encoder": "smallcnn"}


def test_fit_hands_every_record_to_on_epoch(digits):
    seen = []

    class Recorder(Tracker):
        def log_metrics(self, record):
            seen.append(record)

    result = train_run("ce", Config(**{**SMALLCNN, "epochs": 1}), digits, tracker=Recorder())
    assert seen == result.fit.history and seen[0]["stage"] == "ce"


def test_tensorboard_gets_config_metrics_and_pictures(digits, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train_run("ce", Config(**SMALLCNN, logger="tensorboard"), digits, tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"ce/loss", "ce/train_acc", "ce/val_acc", "ce/lr"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("ce/val_acc")] == [1, 2]
    assert [e.value for e in events.Scalars("ce/val_acc")] == pytest.approx(
        [r["val_acc"] for r in result.fit.history])
    assert "curves" in tags["images"]
    assert "config/text_summary" in tags["tensors"]  # add_text
    assert "final/val_acc" in tags["scalars"]  # add_hparams' metrics
    # the projector: the validation images' encoder embeddings, their classes and thumbnails, tagged by stage
    entry = tmp_path / "tensorboard" / "00002" / "ce"
    assert {p.name for p in entry.iterdir()} == {"tensors.tsv", "metadata.tsv", "sprite.png"}
    assert 'tensor_path: "00002/ce/tensors.tsv"' in (tmp_path / "tensorboard" / "projector_config.pbtxt").read_text()


def read_projector(logdir, step, tag, data):
    """The projector files of one stage, checked against the validation split they came from."""
    from PIL import Image

    entry = logdir / f"{step:05d}" / tag
    rows = [line.split("\t") for line in (entry / "tensors.tsv").read_text().splitlines()]
    labels = (entry / "metadata.tsv").read_text().splitlines()
    assert len(rows) == len(labels) == len(data.val)  # 150 images: below the cap, all of them
    assert sorted(labels) == sorted(data.val.class_names[i] for i in data.val.labels.tolist())
    side = int(np.ceil(np.sqrt(len(labels)))) * 8  # the 8 px digits, tiled in a square
    assert Image.open(entry / "sprite.png").size == (side, side)
    return np.array(rows, dtype=float)


def test_tensorboard_projector_after_each_stage(digits, tmp_path):
    cfg = Config(**{**SMALLCNN, "epochs": 1}, logger="tensorboard", knn_every="0", proj_hidden=64)
    result = train_run("supcon", cfg, digits, tmp_path, until="pretrain")
    logdir = tmp_path / "tensorboard"
    features = read_projector(logdir, 1, "pretrain", digits)
    idx = torch.from_numpy(tsne_subset(digits.val.labels, 5000))
    expected = outputs(result.encoder, digits.val.images[idx], transform=result.inputs.plain())
    assert features.shape == (150, result.encoder.out_dim)
    assert np.allclose(features, expected.numpy(), atol=1e-4)
    # a later writer on the same directory (a probe added with linear --run, say) keeps the earlier entries
    with open_tracker(Config(**SMALLCNN, logger="tensorboard"), tmp_path) as tracker:
        log_projector(tracker, result.encoder, digits, result.inputs, "linear", 4)
    config = (logdir / "projector_config.pbtxt").read_text()
    assert config.count("embeddings {") == 2 and "00001/pretrain/sprite.png" in config and "00004/linear" in config
    read_projector(logdir, 4, "linear", digits)
    with open_tracker(Config(**SMALLCNN, logger="tensorboard"), tmp_path) as tracker:  # the same stage again: replaced
        log_projector(tracker, result.encoder, digits, result.inputs, "linear", 4)
    assert (logdir / "projector_config.pbtxt").read_text().count("embeddings {") == 2


def test_projector_thumbnails_are_small_and_points_capped(shared_data):
    splits = load_dataset(f"npz:{shared_data / 'imagenet5_64.npz'}", image_size=96, max_train=50)
    seen = {}

    class Recorder(Tracker):
        embeddings = True

        def log_embedding(self, tag, features, labels, images, step):
            seen.update(tag=tag, features=features, labels=labels, images=images, step=step)

    encoder = build_encoder("smallcnn", 3, 96)
    log_projector(Recorder(), encoder, splits, Inputs.of_images(splits.train.images, False), "ce", 3, max_points=100)
    assert seen["features"].shape == (100, encoder.out_dim) and len(seen["labels"]) == 100
    assert seen["images"].dtype == torch.uint8 and seen["images"].shape == (100, 3, 64, 64)  # 96 px made 64
    assert (seen["tag"], seen["step"]) == ("ce", 3)
    assert sorted(set(seen["labels"])) == splits.val.class_names  # class-balanced: every class is there
    calls = []

    class Quiet(Tracker):  # a tracker that keeps no embeddings is not handed any (none are computed)
        def log_embedding(self, *args):
            calls.append(args)

    log_projector(Quiet(), encoder, splits, Inputs.of_images(splits.train.images, False), "ce", 3)
    assert calls == []


def _wandb_records(path):
    """The records of an offline run's .wandb file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, chunks, records = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # still being written
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_wandb_offline_run_holds_config_history_and_summary(digits, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path),
                       "WANDB_CONFIG_DIR": str(tmp_path / "config"), "WANDB_CACHE_DIR": str(tmp_path / "cache"),
                       "WANDB_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    train_run("ce", Config(**SMALLCNN, logger="wandb"), digits, out)
    (log,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    # wandb's service process may still be writing the log when finish() returns; teardown() waits for it to exit
    import wandb
    wandb.teardown()
    records = _wandb_records(log)
    assert any(r.WhichOneof("record_type") == "exit" for r in records), "the offline run never recorded its exit"

    def items(entries):
        return {e.key or "/".join(e.nested_key): e.value_json for e in entries}

    history = [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    epochs = [h for h in history if "ce/loss" in h]
    assert [int(h["ce/epoch"]) for h in epochs] == [1, 2] and all("ce/val_acc" in h for h in epochs)
    assert any(h.get("curves/_type") == '"image-file"' for h in history)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == "run" and items(run.config.update)["epochs"] == "2"
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(items(r.summary.update))
    assert "final/val_acc" in summary


@pytest.mark.parametrize("logger, module", [("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_logger_package_names_the_extra(logger, module, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import then raises ImportError
    with pytest.raises(ImportError, match=rf"pip install 'supcon\[{logger}\]'"):
        open_tracker(Config(logger=logger), tmp_path)
    code = main(["ce", *"--max-train 100 --max-val 50 --epochs 1 --quiet".split(), "--logger", logger,
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"pip install 'supcon[{logger}]'" in err[0]
