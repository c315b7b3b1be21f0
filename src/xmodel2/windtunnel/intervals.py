"""Confidence intervals for the LR-transfer verdict, from independent seeds.

Each seed is one full replication of the sweep: its own weight initialisation and its own data
order, at every (arm, width, LR) point. From one seed we get one optimum per width (the parabola
vertex, `find_optimum`) and one drift: the least-squares slope of those optima against log2 width,
in octaves of LR per doubling of width. Seeds are independent, so their K slopes are K independent
draws of one estimator, and the t-interval over them (K - 1 degrees of freedom) is the standard,
assumption-light interval for its mean: it needs only that a seed's slope is roughly normal
(a least-squares slope averages several widths' optima), and it keeps whatever correlation a
seed induces between its widths inside the one number it contributes. A bootstrap over seeds
would need many more than the 3-5 seeds a sweep can afford. The same t-interval, per width, gives
the error bars on the optima.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over `n` replicates with its two-sided confidence interval; infinite for n = 1."""

    mean: float
    low: float
    high: float
    n: int

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def within(self, low: float, high: float) -> bool:
        return low <= self.low and self.high <= high

    def to_dict(self) -> dict:
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731 (JSON has no infinity)
        return {"mean": self.mean, "low": finite(self.low), "high": finite(self.high), "n": self.n}

    @classmethod
    def from_dict(cls, data: dict) -> "Interval":
        low, high = data["low"], data["high"]
        return cls(data["mean"], -math.inf if low is None else low, math.inf if high is None else high,
                   data["n"])

    def text(self, digits: int = 2) -> str:
        if not math.isfinite(self.low):
            return f"{self.mean:+.{digits}f} (one seed: no interval)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Student-t interval for the mean of independent replicates."""
    from scipy.stats import t

    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def drift_per_doubling(optima: Mapping[int, float]) -> float:
    """Least-squares slope of the optimum (log2 LR) against log2 width: octaves per doubling."""
    if len(optima) < 2:
        raise ValueError("a drift needs at least two widths")
    xs = [math.log2(w) for w in optima]
    ys = list(optima.values())
    mx, my = math.fsum(xs) / len(xs), math.fsum(ys) / len(ys)
    return math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.fsum((x - mx) ** 2 for x in xs)


def drift_interval(optima_by_seed: Sequence[Mapping[int, float]], confidence: float = CONFIDENCE
                   ) -> tuple[Interval, list[float]]:
    """The t-interval of the per-seed drifts, and the drifts themselves."""
    drifts = [drift_per_doubling(optima) for optima in optima_by_seed]
    return t_interval(drifts, confidence), drifts
