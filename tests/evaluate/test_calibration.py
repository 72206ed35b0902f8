"""Margins and the expected calibration error, checked on examples worked out by hand."""

import math

import pytest
import torch
from conftest import assert_picture

from supcon.evaluate.calibration import (
    calibration_bins,
    calibration_summary,
    class_logits,
    expected_calibration_error,
    margins,
    plot_margins,
    plot_reliability,
    probabilities,
)

# Five images, three classes; the confidences avoid bin edges (k / 15) so that rounding cannot move them.
PROBS = torch.tensor([[0.90, 0.05, 0.05],   # label 0: confidence 0.90, correct -> bin 13 (0.867, 0.933]
                      [0.90, 0.05, 0.05],   # label 1: confidence 0.90, wrong   -> bin 13
                      [0.20, 0.70, 0.10],   # label 1: confidence 0.70, correct -> bin 10 (0.667, 0.733]
                      [0.50, 0.30, 0.20],   # label 2: confidence 0.50, wrong   -> bin 7 (0.467, 0.533]
                      [0.45, 0.30, 0.25]],  # label 0: confidence 0.45, correct -> bin 6 (0.4, 0.467]
                     dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 2, 0])


def test_ece_of_a_hand_computed_example():
    logits = PROBS.log()  # softmax(log p) = p
    # bin 13: 2 images, accuracy 1/2, confidence 0.9 -> gap 0.4; bin 10: gap |1 - 0.7| = 0.3;
    # bin 7: gap |0 - 0.5| = 0.5; bin 6: gap |1 - 0.45| = 0.55.  ECE = (2 * 0.4 + 0.3 + 0.5 + 0.55) / 5 = 0.43
    assert expected_calibration_error(logits, LABELS, bins=15) == pytest.approx(0.43, abs=1e-9)
    # one bin: |accuracy - mean confidence| = |3/5 - (0.9 + 0.9 + 0.7 + 0.5 + 0.45) / 5| = |0.6 - 0.69| = 0.09
    assert expected_calibration_error(logits, LABELS, bins=1) == pytest.approx(0.09, abs=1e-9)
    b = calibration_bins(logits, LABELS, bins=15)
    assert b["count"].tolist() == [0] * 6 + [1, 1, 0, 0, 1, 0, 0, 2, 0]
    assert b["accuracy"][13] == pytest.approx(0.5) and b["confidence"][13] == pytest.approx(0.9)
    assert math.isnan(b["accuracy"][0]) and b["edges"][-1] == 1.0


def test_a_calibrated_model_has_no_calibration_error():
    # every image at confidence 0.75 and three in four correct: accuracy equals confidence in the one filled bin
    probs = torch.tensor([[0.75, 0.25]] * 8)
    labels = torch.tensor([0, 0, 0, 1, 0, 0, 0, 1])
    assert expected_calibration_error(probs.log(), labels) == pytest.approx(0.0, abs=1e-7)


def test_margins_by_hand_and_their_sign_is_correctness():
    logits = torch.tensor([[2.0, 1.0, -1.0], [2.0, 1.0, -1.0], [0.0, 3.0, 3.5]])
    assert margins(logits, torch.tensor([0, 2, 1])).tolist() == [1.0, -3.0, -0.5]
    torch.manual_seed(0)
    random = torch.randn(200, 5)
    labels = torch.randint(0, 5, (200,))
    assert torch.equal(margins(random, labels) > 0, random.argmax(1) == labels)


def test_binary_head_is_the_two_class_model_with_logits_0_and_z():
    z = torch.tensor([[2.0], [-1.0], [0.5]])
    labels = torch.tensor([1, 1, 0])
    assert torch.equal(class_logits(z), torch.tensor([[0.0, 2.0], [0.0, -1.0], [0.0, 0.5]]))
    p = probabilities(z)
    assert torch.allclose(p[:, 1], torch.sigmoid(z[:, 0])) and torch.allclose(p.sum(1), torch.ones(3))
    assert margins(z, labels).tolist() == [2.0, -1.0, -0.5]
    assert expected_calibration_error(z, labels) == pytest.approx(
        expected_calibration_error(class_logits(z), labels))


def test_summary_and_pictures(tmp_path):
    logits = PROBS.log().float()
    summary = calibration_summary(logits, LABELS)
    assert summary["accuracy"] == pytest.approx(0.6) and summary["ece"] == pytest.approx(0.43, abs=1e-6)
    assert summary["nll"] == pytest.approx(-PROBS[torch.arange(5), LABELS].log().mean().item(), rel=1e-5)
    assert summary["margin_quantiles"]["p50"] <= summary["margin_quantiles"]["p90"]
    assert summary["bins"]["accuracy"][0] is None and summary["bins"]["count"][13] == 2
    assert_picture(plot_reliability([("a", summary), ("b", summary)], tmp_path / "r.png"), panels=2)
    assert_picture(plot_margins([("a", margins(logits, LABELS))], tmp_path / "m.png"))
    with pytest.raises(ValueError, match="bins to be an integer >= 1"):
        expected_calibration_error(logits, LABELS, bins=0)
