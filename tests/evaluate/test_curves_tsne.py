import json

import numpy as np
import pytest
from PIL import Image

from supcon.evaluate.curves import plot_curves, read_metrics
from supcon.evaluate.tsne import draw_tsne, tsne_subset


def _write_metrics(run_dir, records):
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_curves_have_a_loss_panel_per_stage_and_accuracy_where_measured(tmp_path):
    _write_metrics(tmp_path, [{"stage": "pretrain", "epoch": e, "loss": 5 - e} for e in (1, 2, 3)]
                   + [{"stage": "linear", "epoch": e, "loss": 1 / e, "train_acc": 0.5 + e / 10, "val_acc": 0.6}
                      for e in (1, 2)])
    path = plot_curves(tmp_path)
    assert path == tmp_path / "curves.png"
    width, _ = Image.open(path).size
    assert width == 3 * 420  # pretrain loss, linear loss, linear accuracy


def test_curves_need_metrics(tmp_path):
    assert plot_curves(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text("{broken\n")
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        read_metrics(tmp_path)


def test_tsne_subset_is_balanced_seeded_and_capped():
    labels = np.repeat(np.arange(4), [500, 300, 150, 50])
    idx = tsne_subset(labels, 200, seed=1)
    assert len(idx) == 200 and np.array_equal(idx, tsne_subset(labels, 200, seed=1))
    assert np.bincount(labels[idx]).tolist() == [100, 60, 30, 10]
    assert len(tsne_subset(labels[:40], 200)) == 40


def test_draw_tsne_returns_the_points_it_drew(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(30) % 3
    features = rng.normal(size=(30, 8)) + labels[:, None] * 3
    path, (xy,) = draw_tsne([("a panel", features)], labels, ["x", "y", "z"], tmp_path / "t.png")
    assert path.is_file() and xy.shape == (30, 2)
