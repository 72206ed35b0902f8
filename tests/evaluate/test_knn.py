"""Tests for supcon.evaluate.knn: a hand-computed vote, scikit-learn's KNeighborsClassifier on real images, the
memory bound of the blocked top-k, and the monitor's schedule."""

import math

import numpy as np
import pytest
import torch
from conftest import LargestTensor

from supcon.evaluate.knn import KnnSchedule, chance_accuracy, knn_accuracy, knn_predict


def _circle(*degrees):
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees],
                        dtype=torch.float64)


def test_hand_computed_votes():
    # The query at 0 degrees; its three nearest: one class-0 point at 0 degrees (s = 1), two class-1 points at
    # +-30 degrees (s = cos 30 = 0.866); a class-0 point at 90 degrees is fourth.
    train = _circle(0, 30, -30, 90)
    labels = torch.tensor([0, 1, 1, 0])
    query = _circle(0)
    # Uniform: two votes against one.
    assert knn_predict(train, labels, query, k=3, weights="uniform").tolist() == [1]
    # exp(s / 0.07): e^(1/0.07) = 1.6e6 against 2 e^(0.866/0.07) = 4.7e5: the nearest one wins.
    assert knn_predict(train, labels, query, k=3).tolist() == [0]
    assert math.exp(1 / 0.07) > 2 * math.exp(math.cos(math.radians(30)) / 0.07)
    # At T = 1: e = 2.72 against 2 e^0.866 = 4.76.
    assert knn_predict(train, labels, query, k=3, temperature=1.0).tolist() == [1]
    # k = 1 and k beyond the training set (capped: all four, 2 against 2, the tie goes to the smaller class).
    assert knn_predict(train, labels, query, k=1, weights="uniform").tolist() == [0]
    assert knn_predict(train, labels, query, k=50, weights="uniform").tolist() == [0]
    # Cosine similarity: the scale of a feature does not matter.
    assert knn_predict(train * torch.tensor([[3.0], [0.5], [2.0], [7.0]], dtype=torch.float64), labels,
                       query * 9, k=3).tolist() == [0]
    assert knn_accuracy(train, labels, _circle(1, 89), torch.tensor([0, 0]), k=1) == 1.0


def _pixels(path, size=16):
    """Real images as features: 64 px photos average-pooled to size x size, flattened, in float64."""
    data = np.load(path)

    def features(x):
        x = torch.from_numpy(x).permute(0, 3, 1, 2).double()
        return torch.nn.functional.adaptive_avg_pool2d(x, size).flatten(1)

    return (features(data["x_train"]), torch.from_numpy(data["y_train"]).long(), features(data["x_test"]),
            torch.from_numpy(data["y_test"]).long())


def test_matches_scikit_learn_on_real_images(shared_data):
    from sklearn.neighbors import KNeighborsClassifier

    train_x, train_y, val_x, val_y = _pixels(shared_data / "imagenet5_64.npz")
    sklearn = KNeighborsClassifier(n_neighbors=20, weights="uniform", metric="cosine", algorithm="brute")
    expected = sklearn.fit(train_x.numpy(), train_y.numpy()).predict(val_x.numpy())
    ours = knn_predict(train_x, train_y, val_x, k=20, weights="uniform")
    assert np.array_equal(ours.numpy(), expected)
    assert knn_accuracy(train_x, train_y, val_x, val_y, k=20, weights="uniform") == pytest.approx(
        sklearn.score(val_x.numpy(), val_y.numpy()), abs=1e-12)
    # The weighted vote is a different classifier, but on these photos it should not be a worse one by much.
    assert knn_accuracy(train_x, train_y, val_x, val_y) > 0.3 > chance_accuracy(val_y)


def test_blocks_bound_memory_and_never_change_the_result(shared_data):
    train_x, train_y, val_x, _ = _pixels(shared_data / "flowers5_64.npz", size=4)  # 48 features per image
    one_block = knn_predict(train_x, train_y, val_x, block_size=len(val_x))
    for block_size in (7, 64):
        with LargestTensor() as mode:
            blocked = knn_predict(train_x, train_y, val_x, block_size=block_size)
        assert torch.equal(blocked, one_block)
        # The largest tensor is a block's similarities or the normalised training features, never Q x M.
        assert mode.largest <= max(block_size * len(train_x), train_x.numel()) < len(val_x) * len(train_x)


@pytest.mark.slow
def test_fifty_thousand_by_fifty_thousand_in_bounded_memory():
    g = torch.Generator().manual_seed(0)
    n, dim, classes = 50_000, 16, 10
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, dim, generator=g)
    train = centres[labels] + 0.8 * torch.randn(n, dim, generator=g)
    queries = centres[labels] + 0.8 * torch.randn(n, dim, generator=g)
    with LargestTensor() as mode:
        acc = knn_accuracy(train, labels, queries, labels)
    assert acc > 0.9
    assert mode.largest <= 1 << 22  # 16 MiB of fp32 similarities at a time, not the 10 GB of 50,000 x 50,000


def test_chance_and_bad_input():
    assert chance_accuracy(torch.tensor([0, 0, 0, 1])) == 0.75
    x, y = torch.randn(5, 3), torch.arange(5)
    for kwargs, message in ((dict(k=0), "k to be an integer"), (dict(temperature=0.0), "temperature > 0"),
                            (dict(weights="distance"), "weights in"), (dict(block_size=0), "block_size")):
        with pytest.raises(ValueError, match=message):
            knn_predict(x, y, x, **kwargs)
    with pytest.raises(ValueError, match=r"features shaped \[M, D\] and \[Q, D\]"):
        knn_predict(x, y, torch.randn(2, 4))
    with pytest.raises(ValueError, match="one label per training feature"):
        knn_predict(x, y[:3], x)


def test_schedule():
    auto = KnnSchedule("auto", epochs=12)
    assert auto.due(1) and auto.resolved is None
    auto.measured(knn_seconds=0.05, epoch_seconds=1.0)  # a twentieth of an epoch: every epoch
    assert auto.resolved == 1 and all(auto.due(e) for e in range(2, 13))
    costly = KnnSchedule("auto", epochs=12)
    costly.measured(knn_seconds=0.2, epoch_seconds=1.0)
    assert [e for e in range(2, 13) if costly.due(e)] == [5, 10, 12]  # every 5, and the last epoch
    assert [e for e in range(1, 8) if KnnSchedule(3, epochs=7).due(e)] == [3, 6, 7]
    assert not any(KnnSchedule(0, epochs=5).due(e) for e in range(1, 6))
