import struct
import sys
import time

import pytest

from supcon import train
from supcon.cli import main
from supcon.config import Config
from supcon.data import load_dataset
from supcon.tracking import Tracker, open_tracker

QUICK = dict(dataset="digits", max_train=300, max_val=150, epochs=2, batch_size=64, quiet=True, tsne=False,
             encoder="smallcnn")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", max_train=300, max_val=150)


def test_fit_hands_every_record_to_on_epoch(digits):
    seen = []

    class Recorder(Tracker):
        def log_metrics(self, record):
            seen.append(record)

    result = train.train_ce(Config(**{**QUICK, "epochs": 1}), digits, tracker=Recorder())
    assert seen == result.fit.history and seen[0]["stage"] == "ce"


def test_tensorboard_gets_config_metrics_and_pictures(digits, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train.train_ce(Config(**QUICK, logger="tensorboard"), digits, tmp_path)
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
    train.train_ce(Config(**QUICK, logger="wandb"), digits, out)
    (log,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 30
    # wandb's service process may still be writing the log when finish() returns: wait for its exit record
    records = _wandb_records(log)
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, "the offline run never recorded its exit"
        time.sleep(0.2)
        records = _wandb_records(log)

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
