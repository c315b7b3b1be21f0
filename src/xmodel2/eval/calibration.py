"""Calibration of answer-letter confidences (the report's Figure 4).

For each MMLU question the model's probabilities over the four answer letters are the softmax of
the letters' log-likelihoods after the prompt (" A", " B", " C", " D": one token each for the
usual tokenizers, so this is the softmax of the four letter logits). Confidence is the top
probability, correct means the top letter is the gold one.

ECE (l1): bins of equal width over [0, 1]; a confidence c falls in bin i when
edge_i <= c < edge_{i+1} (1.0 in the last bin), the binning torchmetrics uses; ECE is the
count-weighted mean of |accuracy - mean confidence| over bins. Brier is the mean over questions of
the squared distance between the probability vector and the one-hot gold answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmodel2.eval.multiple_choice import ChoiceResult


@dataclass
class Calibration:
    probabilities: np.ndarray  # (questions, choices)
    gold: np.ndarray  # (questions,)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return (self.probabilities.argmax(axis=1) == self.gold).astype(float)

    def ece(self, bins: int = 15) -> float:
        accuracy, confidence, counts = reliability_bins(self.confidence, self.correct, bins)
        return float(np.sum(np.abs(accuracy - confidence) * counts) / counts.sum())

    def brier(self) -> float:
        onehot = np.eye(self.probabilities.shape[1])[self.gold]
        return float(np.mean(np.sum((self.probabilities - onehot) ** 2, axis=1)))


def from_choice_results(results: list[ChoiceResult]) -> Calibration:
    lls = np.array([r.loglikelihoods for r in results], dtype=np.float64)
    shifted = np.exp(lls - lls.max(axis=1, keepdims=True))
    return Calibration(shifted / shifted.sum(axis=1, keepdims=True), np.array([r.doc.gold for r in results]))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int):
    """Per bin: accuracy, mean confidence, count (empty bins give zeros)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(float)
    safe = np.maximum(counts, 1)
    accuracy = np.bincount(index, weights=correct, minlength=bins) / safe
    mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / safe
    return accuracy, mean_confidence, counts


def reliability_diagram(calibration: Calibration, path: str | Path, bins: int = 10, title: str = "") -> Path:
    """Accuracy per confidence bin against the diagonal, with the bin counts below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xmodel2.fileio import save_figure

    accuracy, confidence, counts = reliability_bins(calibration.confidence, calibration.correct, bins)
    centers = (np.arange(bins) + 0.5) / bins
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=[3, 1], sharex=True)
    top.bar(centers, np.where(counts > 0, accuracy, 0), width=1 / bins, edgecolor="black",
            color="tab:blue", label="accuracy")
    filled = counts > 0
    top.bar(centers, np.where(filled, np.abs(confidence - accuracy), 0),
            bottom=np.where(filled, np.minimum(accuracy, confidence), 0),
            width=1 / bins, color="tab:red", alpha=0.3, edgecolor="tab:red", label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.legend(loc="upper left")
    top.set_title(title or f"Reliability: ECE(10) {calibration.ece(10):.3f}, ECE(15) {calibration.ece(15):.3f}, "
                           f"Brier {calibration.brier():.3f}", fontsize=9)
    bottom.bar(centers, counts, width=1 / bins, color="gray", edgecolor="black")
    bottom.set_xlabel("confidence (top answer-letter probability)")
    bottom.set_ylabel("questions")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    return save_figure(fig, path)
