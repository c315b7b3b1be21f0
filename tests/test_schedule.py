"""WSD and batch schedules: exact values at chosen steps for every decay shape."""

import math

import pytest

from xmodel2.train.schedule import BatchSchedule, WSDSchedule, accumulation_steps, wsd_factor


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


def test_accumulation_steps():
    assert accumulation_steps(32, 8) == 4
    assert accumulation_steps(32, 8, world_size=2) == 2
    with pytest.raises(ValueError):
        accumulation_steps(30, 8)
    with pytest.raises(ValueError):
        BatchSchedule(((5, 8),))
