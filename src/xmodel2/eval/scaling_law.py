"""The post-training scaling law (the report's Figure 5): loss against token position.

Mean cross-entropy at each position t = 1..T over the documents with at least T tokens (t = 1 is
the first token, predicted from the prefix token alone), then a nonlinear least-squares fit of
L(t) = b + (t / c)^a with scipy's curve_fit. Confidence intervals are estimate ± t-quantile(0.975,
dof) · standard error from the fit's covariance; R² is 1 - SS_res / SS_tot on the fitted points.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xmodel2.errors import UserError
from xmodel2.eval.scoring import Scorer


def law(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return b + (t / c) ** a


@dataclass
class Fit:
    a: float
    b: float
    c: float
    intervals: dict[str, tuple[float, float]]  # 95% confidence intervals
    r2: float

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "c": self.c, "ci95": {k: list(v) for k, v in self.intervals.items()},
                "r2": self.r2}


def fit_law(positions: np.ndarray, losses: np.ndarray) -> Fit:
    from scipy import optimize, stats

    positions, losses = np.asarray(positions, float), np.asarray(losses, float)
    if len(positions) < 4:
        raise UserError(f"scaling law: need at least 4 positions to fit 3 constants (got {len(positions)})")
    # Start from a straight line in log-log space: (t/c)^a ~ L(t) - b with b a little under the minimum.
    b0 = float(losses.min()) * 0.9
    slope, intercept = np.polyfit(np.log(positions), np.log(np.maximum(losses - b0, 1e-6)), 1)
    a0 = min(slope, -1e-3)
    c0 = float(np.exp(-intercept / a0))
    popt, pcov = optimize.curve_fit(law, positions, losses, p0=(a0, b0, c0), maxfev=20000,
                                    bounds=([-10.0, -np.inf, 1e-9], [0.0, np.inf, np.inf]))
    residual = losses - law(positions, *popt)
    r2 = 1.0 - float(residual @ residual) / float(((losses - losses.mean()) ** 2).sum())
    dof = max(1, len(positions) - 3)
    half = stats.t.ppf(0.975, dof) * np.sqrt(np.diag(pcov))
    intervals = {name: (float(v - h), float(v + h)) for name, v, h in zip("abc", popt, half)}
    return Fit(float(popt[0]), float(popt[1]), float(popt[2]), intervals, r2)


@torch.inference_mode()
def loss_by_position(scorer: Scorer, texts: list[str], length: int) -> tuple[np.ndarray, int]:
    """Mean loss at positions 1..length over the documents with at least `length` tokens."""
    model = scorer.model
    sums, used = torch.zeros(length, dtype=torch.float64), 0
    batch: list[list[int]] = []

    def flush() -> None:
        nonlocal sums, used
        ids = torch.tensor(batch, device=scorer.device)
        logits = model(ids[:, :-1]).float()
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        sums += losses.double().sum(0).cpu()
        used += len(batch)
        batch.clear()

    for text in texts:
        tokens = scorer.tokenizer.encode(text)
        if len(tokens) >= length:
            batch.append([scorer.prefix_id] + tokens[:length])
            if len(batch) == scorer.batch_size:
                flush()
    if batch:
        flush()
    if used == 0:
        raise UserError(f"scaling law: no document has {length} tokens; use a shorter --scaling-length")
    return (sums / used).numpy(), used


def plot_fit(positions: np.ndarray, losses: np.ndarray, fit: Fit, path: str | Path, note: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xmodel2.fileio import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(positions, losses, ".", markersize=3, color="tab:blue", label="mean loss at position t")
    ax.loglog(positions, law(positions, fit.a, fit.b, fit.c), "-", color="tab:red",
              label=f"fit b + (t/c)^a: a={fit.a:.3f}, b={fit.b:.3f}, c={fit.c:.3g} (R²={fit.r2:.3f})")
    ax.set_xlabel("token position t")
    ax.set_ylabel("loss (nats)")
    ax.set_title(note or "Post-training scaling law", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
