"""Where a loss-vs-LR curve bottoms out, in log2(LR) (octaves).

The optimum is the vertex of the parabola through the best grid point and its two neighbours,
kept between those neighbours. When the best point is the first or last of the grid the minimum
may lie outside it: the finder says which edge, and the caller extends the grid by an octave.
Diverged runs count as +inf: they can be the best point's neighbour but never the best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Optimum:
    log2_lr: float
    loss: float  # the parabola's value at the vertex (the best point's loss at an edge)
    edge: str | None = None  # "low" or "high" when the best point sits on that end of the grid

    @property
    def lr(self) -> float:
        return 2.0 ** self.log2_lr


def find_optimum(log2_lrs: Sequence[float], losses: Sequence[float]) -> Optimum | None:
    """The optimum of one curve; None when every run diverged."""
    if len(log2_lrs) != len(losses):
        raise ValueError("log2_lrs and losses differ in length")
    points = sorted(zip(log2_lrs, losses))
    xs = [x for x, _ in points]
    ys = [y if math.isfinite(y) else math.inf for _, y in points]
    if not ys or not math.isfinite(min(ys)):
        return None
    best = ys.index(min(ys))
    if best == 0:
        return Optimum(xs[0], ys[0], edge="low")
    if best == len(xs) - 1:
        return Optimum(xs[-1], ys[-1], edge="high")
    (x0, y0), (x1, y1), (x2, y2) = zip(xs[best - 1:best + 2], ys[best - 1:best + 2])
    if not (math.isfinite(y0) and math.isfinite(y2)):
        # a diverged neighbour gives no curvature: the best grid point is all we know
        return Optimum(x1, y1)
    vertex, value = parabola_vertex((x0, y0), (x1, y1), (x2, y2))
    if vertex is None:
        return Optimum(x1, y1)
    return Optimum(min(max(vertex, x0), x2), value)


def parabola_vertex(p0: tuple[float, float], p1: tuple[float, float],
                    p2: tuple[float, float]) -> tuple[float | None, float]:
    """Vertex (x, y) of the parabola through three points with distinct x; x None if not convex."""
    (x0, y0), (x1, y1), (x2, y2) = p0, p1, p2
    # Newton form: y = y0 + d1 (x - x0) + a (x - x0)(x - x1)
    d1 = (y1 - y0) / (x1 - x0)
    d2 = (y2 - y1) / (x2 - x1)
    a = (d2 - d1) / (x2 - x0)
    if a <= 0:
        return None, y1
    vertex = (x0 + x1) / 2 - d1 / (2 * a)
    value = y0 + d1 * (vertex - x0) + a * (vertex - x0) * (vertex - x1)
    return vertex, value
