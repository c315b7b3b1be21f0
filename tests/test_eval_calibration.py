"""Calibration: ECE and Brier against independent implementations, and the reliability diagram."""

import numpy as np
import pytest
import torch

from xmodel2.eval.calibration import Calibration, from_choice_results, reliability_diagram
from xmodel2.eval.multiple_choice import ChoiceResult
from xmodel2.eval.tasks import ChoiceDoc


def random_calibration(seed: int, n: int = 500) -> Calibration:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 4)) * rng.uniform(0.2, 4.0, size=(n, 1))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    # gold agrees with the top letter more often than chance, like a real model
    gold = np.where(rng.random(n) < 0.5, probs.argmax(1), rng.integers(0, 4, n))
    return Calibration(probs, gold)


@pytest.mark.parametrize("bins", [10, 15])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_equals_torchmetrics(bins, seed):
    classification = pytest.importorskip("torchmetrics.classification")
    cal = random_calibration(seed)
    metric = classification.MulticlassCalibrationError(num_classes=4, n_bins=bins, norm="l1")
    expected = metric(torch.tensor(cal.probabilities, dtype=torch.float64), torch.tensor(cal.gold)).item()
    assert cal.ece(bins) == pytest.approx(expected, abs=1e-6)


def test_ece_by_hand_and_brier():
    # two questions per confidence level: at 0.9 both right, at 0.4 one right
    probs = np.array([[0.9, 0.1, 0, 0], [0.9, 0.05, 0.05, 0], [0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]])
    cal = Calibration(probs, np.array([0, 0, 0, 1]))
    assert cal.ece(10) == pytest.approx((2 * abs(1 - 0.9) + 2 * abs(0.5 - 0.4)) / 4)
    onehot = np.eye(4)[[0, 0, 0, 1]]
    assert cal.brier() == pytest.approx(np.mean(np.sum((probs - onehot) ** 2, 1)))
    perfect = Calibration(np.eye(4)[[0, 1, 2, 3]], np.array([0, 1, 2, 3]))
    assert perfect.ece(15) == 0 and perfect.brier() == 0


def test_letter_probabilities_are_the_softmax_of_loglikelihoods():
    doc = ChoiceDoc(["q"] * 4, [" A", " B", " C", " D"], 2, [1] * 4)
    cal = from_choice_results([ChoiceResult(doc, [-1.0, -2.0, -0.5, -3.0])])
    expected = torch.softmax(torch.tensor([-1.0, -2.0, -0.5, -3.0], dtype=torch.float64), 0).numpy()
    assert np.allclose(cal.probabilities[0], expected)
    assert cal.correct[0] == 1 and cal.confidence[0] == pytest.approx(expected.max())


def test_reliability_diagram_is_a_png(tmp_path):
    path = reliability_diagram(random_calibration(3), tmp_path / "plots" / "rel.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
