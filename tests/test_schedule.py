"""WSD and batch schedules: exact values at chosen steps for every decay shape."""

import math

import pytest

from xmodel2.train.schedule import (BatchSchedule, StageSplitError, WSDSchedule,
                                    largest_micro_batch, length_steps, split_steps, wsd_factor)


def make(shape, **kw):
    return WSDSchedule(warmup_steps=10, decay_start=100, total_steps=150, shape=shape,
                       half_life=kw.get("half_life", 20), floor=kw.get("floor", 0.0))


@pytest.mark.parametrize("shape", ["exponential", "linear", "cosine", "1-sqrt"])
def test_warmup_and_stable_are_shape_independent(shape):
    s = make(shape)
    assert s.factor(0) == pytest.approx(0.1)
    assert s.factor(4) == pytest.approx(0.5)
    assert s.factor(9) == pytest.approx(1.0)
    assert s.factor(10) == 1.0
    assert s.factor(99) == 1.0
    assert s.factor(100) == 1.0  # first decay step: S, factor 0.5^0


def test_exponential_decay_matches_report_formula():
    s = make("exponential", half_life=20)
    for step in (100, 110, 120, 140, 149):
        assert s.factor(step) == pytest.approx(0.5 ** ((step - 100) / 20))
    assert s.factor(120) == pytest.approx(0.5)
    assert s.factor(140) == pytest.approx(0.25)


def test_linear_cosine_sqrt_values():
    assert make("linear").factor(125) == pytest.approx(0.5)
    assert make("linear").factor(140) == pytest.approx(0.2)
    assert make("cosine").factor(125) == pytest.approx(0.5)
    assert make("cosine").factor(112.5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert make("1-sqrt").factor(125) == pytest.approx(1 - math.sqrt(0.5))
    assert make("1-sqrt").factor(112.5) == pytest.approx(0.5)


@pytest.mark.parametrize("shape", ["exponential", "linear", "cosine", "1-sqrt"])
def test_floor_and_monotone(shape):
    s = make(shape, floor=0.3, half_life=5)
    values = [s.factor(i) for i in range(150)]
    assert min(values[100:]) == pytest.approx(0.3)
    decay = values[100:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_no_decay_stage_and_validation():
    s = WSDSchedule(warmup_steps=0, decay_start=50, total_steps=50)
    assert [s.factor(i) for i in (0, 25, 49)] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        WSDSchedule(warmup_steps=10, decay_start=5, total_steps=20)
    with pytest.raises(ValueError):
        make("square")
    with pytest.raises(ValueError):
        wsd_factor(-1, s)


def test_batch_schedule_sizes_and_offsets():
    b = BatchSchedule(((0, 8), (10, 16), (20, 32)))
    assert [b.size(s) for s in (0, 9, 10, 19, 20, 1000)] == [8, 8, 16, 16, 32, 32]
    assert b.offset(0) == 0
    assert b.offset(5) == 40
    assert b.offset(10) == 80
    assert b.offset(15) == 80 + 5 * 16
    assert b.offset(25) == 80 + 160 + 5 * 32
    # offset is the running sum of sizes
    assert all(b.offset(s + 1) - b.offset(s) == b.size(s) for s in range(40))


def test_a_batch_schedule_starts_at_step_0():
    with pytest.raises(ValueError):
        BatchSchedule(((5, 8),))


# ---- stage lengths -----------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths", [
    [None, 0.2],  # the embedded default: stable takes the rest, decay a fifth
    [0.8, 0.2],  # every stage a fraction: the longest absorbs the rounding
    [0.1, None, 0.25],
    [0.5, 0.3, 0.2],
    [1, None, 0.2],
])
def test_every_run_length_splits_into_stages_of_at_least_one_step(lengths):
    for total in range(len(lengths), 1001):
        steps = split_steps(total, lengths)
        assert sum(steps) == total and min(steps) >= 1, (total, steps)
        for value, n in zip(lengths, steps):
            if value == 1:
                assert n == 1  # a whole number counts steps, even 1
            elif value is not None:
                assert abs(n - value * total) <= len(lengths)  # within rounding of the fraction


def test_fractions_round_to_the_nearest_step_halves_up_exactly():
    assert [length_steps(0.5, n) for n in (1, 3, 5)] == [1, 2, 3]  # halves up, not to even
    assert length_steps(0.15, 10) == 2  # 1.5 as written, although the float 0.15 lies below 0.15
    assert length_steps(0.0667, 600) == 40 and length_steps(40, 600) == 40
    assert split_steps(2, [None, 0.2]) == [1, 1]  # 0.4 steps: at least one
    assert split_steps(600, [None, 0.2]) == [480, 120]
    assert split_steps(10, [0.3333, 0.3333, 0.3334]) == [3, 3, 4]
    assert split_steps(600, [100, 380, 120]) == [100, 380, 120]


@pytest.mark.parametrize("total, lengths, message", [
    (1, [None, 0.2], "train.steps=1 leaves no steps for stage 0 after the other stages' 1"),
    (10, [None, None], "stages: at most one stage may leave `steps` unset"),
    (10, [0.5, 0.4], "stages add up to 9 steps but train.steps=10"),
    (10, [4, 5], "stages add up to 9 steps but train.steps=10"),
    (10, [None, 1.5], "stages.1.steps: must be a whole number of steps >= 1 or a fraction"),
    (10, [0, None], "stages.0.steps: must be"),
    (3, [0.25, 0.25, 0.25, 0.25], "train.steps=3 leaves no steps for stage 0 after the other stages' 3"),
])
def test_stage_lengths_that_cannot_split_the_run_are_refused(total, lengths, message):
    with pytest.raises(StageSplitError) as info:
        split_steps(total, lengths)
    assert str(info.value).startswith(message)


def test_largest_micro_batch_divides_every_batch_and_fits():
    assert largest_micro_batch([16], lambda m: True) == 16
    assert largest_micro_batch([16], lambda m: m <= 5) == 4
    assert largest_micro_batch([12, 18], lambda m: True) == 6
    assert largest_micro_batch([7], lambda m: False) == 1
