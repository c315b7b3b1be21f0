"""The best SFT share with a confidence interval: a quadratic through the trials, bootstrapped.

The estimate is the vertex of the least-squares quadratic of the objective against SFT share,
kept inside the searched range (a fit that is not convex, or whose vertex lies outside, puts the
optimum at the better end). Its uncertainty comes from a case bootstrap over the trials: draw as
many trials as there are, with replacement, refit, take the optimum; the interval is the middle
95% of those optima (the percentile method). Resampling whole trials, not residuals, assumes
neither that the quadratic is the true shape nor that every share and mix is equally noisy: a
grid search has two or more mixes per share whose losses differ systematically. The bootstrap is
seeded, so the same trials always give the same interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 4000
REPORT_RANGE = (0.60, 0.69)  # the Xmodel-2 report's best SFT share in the decay stage


@dataclass(frozen=True)
class ShareInterval:
    estimate: float  # the optimum of the fit on all trials
    low: float
    high: float
    confidence: float
    resamples: int  # resamples with a fit (at least three distinct shares)

    def to_dict(self) -> dict:
        return asdict(self)

    def report_range_verdict(self, report: tuple[float, float] = REPORT_RANGE) -> str:
        """Where the report's range lies relative to this interval, in words."""
        low, high = report
        span = f"the report's {low:.0%}-{high:.0%}"
        if self.low <= low and high <= self.high:
            return f"{span} lies inside the interval"
        if low <= self.low and self.high <= high:
            return f"the interval lies inside {span}"
        if high < self.low or low > self.high:
            return f"{span} lies outside the interval"
        return f"{span} overlaps the interval in part"


def quadratic_optima(shares: np.ndarray, values: np.ndarray, low: float, high: float,
                     maximize: bool = False) -> np.ndarray:
    """Optimum of the least-squares quadratic for each row of `shares`/`values` (shape
    [fits, trials]), clamped to [low, high]; NaN where a row has fewer than three distinct shares."""
    sign = -1.0 if maximize else 1.0
    x, y = np.atleast_2d(shares).astype(float), sign * np.atleast_2d(values).astype(float)
    powers = np.stack([x ** 2, x, np.ones_like(x)], axis=-1)  # [fits, trials, 3]
    gram = powers.transpose(0, 2, 1) @ powers
    rhs = powers.transpose(0, 2, 1) @ y[..., None]
    distinct = (np.diff(np.sort(x, axis=1), axis=1) > 0).sum(axis=1) >= 2  # three distinct shares
    gram[~distinct] = np.eye(3)  # placeholder systems, discarded below
    a, b, c = np.linalg.solve(gram, rhs)[..., 0].T
    ends = np.where(a * low ** 2 + b * low <= a * high ** 2 + b * high, low, high)
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.where(a > 0, np.clip(-b / (2 * a), low, high), ends)
    return np.where(distinct, vertex, np.nan)


def share_interval(shares: Sequence[float], values: Sequence[float], maximize: bool = False,
                   confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
                   ) -> ShareInterval | None:
    """The optimum share and its percentile-bootstrap interval; None with fewer than three
    distinct shares."""
    x, y = np.asarray(shares, dtype=float), np.asarray(values, dtype=float)
    if len(np.unique(x)) < 3:
        return None
    low, high = float(x.min()), float(x.max())
    estimate = float(quadratic_optima(x, y, low, high, maximize)[0])
    picks = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    optima = quadratic_optima(x[picks], y[picks], low, high, maximize)
    optima = optima[~np.isnan(optima)]
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(optima, [tail, 1 - tail])
    return ShareInterval(estimate, float(lo), float(hi), confidence, int(optima.size))
