"""Learning-rate and batch-size schedules as pure functions of the step.

WSD (Warmup-Stable-Decay, MiniCPM; used by Xmodel-2): a linear warmup to the peak, a long stable
stage at the peak, then a decay. The report's decay is exponential, ``0.5^((s - S) / T)`` with S
the first decay step and T the half-life in steps; linear, cosine and 1-sqrt shapes run from 1 to
0 across the decay stage. Every shape is floored at ``floor`` (a fraction of the peak).

The functions return a factor in (0, 1]; the trainer multiplies each parameter group's own
learning rate by it, so μP's per-group ratios hold at every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

DECAY_SHAPES = ("exponential", "linear", "cosine", "1-sqrt")


@dataclass(frozen=True)
class WSDSchedule:
    warmup_steps: int
    decay_start: int  # first step of the decay stage (S); total_steps means "never decays"
    total_steps: int
    shape: str = "exponential"
    half_life: float = 5000.0  # T, for the exponential shape
    floor: float = 0.0

    def __post_init__(self) -> None:
        if self.shape not in DECAY_SHAPES:
            raise ValueError(f"decay shape must be one of {', '.join(DECAY_SHAPES)}, got {self.shape!r}")
        if not 0 <= self.warmup_steps <= self.decay_start <= self.total_steps:
            raise ValueError("need 0 <= warmup_steps <= decay_start <= total_steps, got "
                             f"{self.warmup_steps}, {self.decay_start}, {self.total_steps}")
        if self.half_life <= 0 or not 0 <= self.floor <= 1:
            raise ValueError("half_life must be positive and floor within [0, 1]")

    def factor(self, step: int) -> float:
        return wsd_factor(step, self)


def wsd_factor(step: int, schedule: WSDSchedule) -> float:
    """The LR factor at `step` (0-based): warmup (step+1)/W, then 1, then the decay shape."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if step < schedule.decay_start:
        return 1.0
    return max(schedule.floor, decay_factor(step - schedule.decay_start,
                                            schedule.total_steps - schedule.decay_start,
                                            schedule.shape, schedule.half_life))


def decay_factor(steps_into_decay: int, decay_steps: int, shape: str, half_life: float) -> float:
    """The decay curve alone: 1 at its first step, falling as the shape says."""
    if shape == "exponential":
        return 0.5 ** (steps_into_decay / half_life)
    progress = min(1.0, steps_into_decay / max(1, decay_steps))
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    raise ValueError(f"unknown decay shape {shape!r}")


# ---- batch size ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchSchedule:
    """Global batch size in sequences, piecewise constant: ``[(from_step, sequences), ...]``.

    The report raised the batch from ~2M to ~4M tokens early in training; with a fixed micro-batch
    that is a change in the number of gradient-accumulation steps.
    """

    segments: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not self.segments or self.segments[0][0] != 0:
            raise ValueError("the batch schedule must start at step 0")
        steps = [s for s, _ in self.segments]
        if steps != sorted(set(steps)):
            raise ValueError("batch schedule steps must be strictly increasing")
        if any(size <= 0 for _, size in self.segments):
            raise ValueError("batch sizes must be positive")

    @classmethod
    def constant(cls, sequences: int) -> "BatchSchedule":
        return cls(((0, sequences),))

    def size(self, step: int) -> int:
        size = self.segments[0][1]
        for start, value in self.segments:
            if step >= start:
                size = value
        return size

    def offset(self, step: int) -> int:
        """Sequences consumed before `step`: the first global sample index of that step."""
        total = 0
        bounds = list(self.segments) + [(math.inf, 0)]
        for (start, size), (next_start, _) in zip(bounds, bounds[1:]):
            if step <= start:
                break
            total += size * (min(step, next_start) - start)
        return int(total)


def largest_micro_batch(per_rank_batches: Sequence[int], fits: Callable[[int], bool]) -> int:
    """The largest micro-batch that divides every per-rank batch and for which `fits` holds;
    1 when none does (a memory check then says what one sequence needs)."""
    common = math.gcd(*per_rank_batches)
    for size in range(common, 0, -1):
        if common % size == 0 and fits(size):
            return size
    return 1


# ---- lengths: a whole number of steps or a fraction of a total --------------------------------------

def is_length(value: float) -> bool:
    """A length is a whole number of steps (>= 0) or a fraction in (0, 1); 1 is one step."""
    return value >= 0 and (float(value).is_integer() or value < 1)


def length_steps(value: float, total: int) -> int:
    """Whole steps of a length: itself, or `value * total` rounded to the nearest step, halves up.

    The fraction is read as the decimal the user wrote (0.15 is 15/100, not the binary float
    below it), so the rounding of a half is exact and the same on every machine.
    """
    if float(value).is_integer():
        return int(value)
    return math.floor(Fraction(str(value)) * total + Fraction(1, 2))


class StageSplitError(ValueError):
    """Stage lengths that do not split the run; the message names the config key at fault."""


def split_steps(total: int, lengths: Sequence[float | None], names: Sequence[str] = ()) -> list[int]:
    """The steps of each stage of a `total`-step run, adding up to `total`.

    A length is a whole number of steps, a fraction of `total` in (0, 1), or None: the steps the
    other stages leave (at most one stage). A fraction rounds to the nearest step, halves up, and
    to at least one step. When no stage is None, the lengths must add up to `total` before rounding,
    and the longest stage given as a fraction (the first of equals) takes what rounding gained or
    lost, a step being the smallest change to it.
    """
    for index, value in enumerate(lengths):
        if value is not None and (value <= 0 or not is_length(value)):
            raise StageSplitError(f"stages.{index}.steps: must be a whole number of steps >= 1 or a "
                                  f"fraction of train.steps in (0, 1), got {value}")
    open_stages = [i for i, value in enumerate(lengths) if value is None]
    if len(open_stages) > 1:
        raise StageSplitError("stages: at most one stage may leave `steps` unset")
    steps = [0 if value is None else max(1, length_steps(value, total)) for value in lengths]
    if open_stages:
        filler = open_stages[0]
    else:
        exact = sum(Fraction(str(v)) * (1 if float(v).is_integer() else total) for v in lengths)
        if exact != total:
            raise StageSplitError(f"stages add up to {float(exact):g} steps but train.steps={total}")
        fractions = [i for i, value in enumerate(lengths) if not float(value).is_integer()]
        if not fractions:
            return steps
        filler = max(fractions, key=lambda i: (lengths[i], -i))
    others = sum(steps) - steps[filler]
    steps[filler] = total - others
    if steps[filler] < 1:
        name = repr(names[filler]) if filler < len(names) else str(filler)
        raise StageSplitError(f"train.steps={total} leaves no steps for stage {name} after the "
                              f"other stages' {others}")
    return steps
