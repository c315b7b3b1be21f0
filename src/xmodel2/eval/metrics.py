"""Means with the harness's standard error: sample standard deviation (n - 1) over sqrt(n)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence


@dataclass
class Metric:
    task: str
    metric: str
    value: float
    stderr: float | None
    n: int
    shots: int
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def mean_stderr(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    mu = mean(values)
    variance = sum((v - mu) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n)
