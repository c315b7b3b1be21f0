"""Training metrics: an MFU is never shown above 100%. It is restated against the best matmul peak
measured (start-up or once again later); a step that still beats the peak shows "MFU n/a"."""

from __future__ import annotations

import json
import math

import pytest
import torch

from xmodel2.train.hardware import measure_matmul_flops
from xmodel2.train.metrics import MFU_NOT_AVAILABLE, MatmulPeak, MetricsLogger, Progress, mfu_text


def step_record(mfu: float, step: int = 10) -> dict:
    return {"step": step, "tokens": 4096 * step, "loss": 3.0, "lr": 0.01, "grad_norm": 1.0,
            "tokens_per_s": 1000.0, "mfu": mfu}


def logged(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_mfu_text():
    assert [mfu_text(v) for v in (0.0, 0.415, 1.0)] == ["MFU 0.0%", "MFU 41.5%", "MFU 100.0%"]
    assert {mfu_text(v) for v in (None, 1.001, 12.0, -0.1, math.inf, math.nan)} == {MFU_NOT_AVAILABLE}


def test_an_mfu_within_the_peak_is_shown(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(step_record(0.25))
    assert "MFU 25.0%" in logger.postfix()
    assert logged(tmp_path)[0]["mfu"] == 0.25


@pytest.mark.parametrize("mfu", [1.0001, 4.98, math.inf, math.nan])
def test_an_mfu_above_the_peak_is_not_available(tmp_path, mfu):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(step_record(mfu))
    assert MFU_NOT_AVAILABLE in logger.postfix() and "%" not in logger.postfix()
    assert logged(tmp_path)[0]["mfu"] is None


def test_a_low_start_up_peak_is_measured_again_and_the_higher_kept(tmp_path, capsys):
    # A start-up figure of 1 FLOP/s stands for one taken while other work held the cores: a step
    # achieving 1,000 FLOP/s is 1000x that peak, but a fraction of what the machine really does.
    real = []

    def measure_again() -> float:
        real.append(measure_matmul_flops(torch.float32, size=256))
        return real[-1]

    peak = MatmulPeak(1.0, remeasure=measure_again)
    logger = MetricsLogger(tmp_path, tensorboard=False, peak=peak)
    logger.log(step_record(1000.0))
    assert len(real) == 1 and peak.best == real[0] > 1
    record = logged(tmp_path)[0]
    assert record["mfu"] == pytest.approx(1000.0 / real[0]) and record["peak_flops"] == real[0]
    assert "n/a" not in logger.postfix()
    assert "matmul peak measured again" in capsys.readouterr().err
    logger.log(step_record(2000.0, step=20))  # later records use the better peak, no new measurement
    assert len(real) == 1 and logged(tmp_path)[1]["mfu"] == pytest.approx(2000.0 / real[0])


def test_a_step_beating_the_remeasured_peak_too_is_not_available(tmp_path):
    calls = []

    def lower_figure() -> float:
        calls.append(1)
        return 0.5e9

    peak = MatmulPeak(1e9, remeasure=lower_figure)
    logger = MetricsLogger(tmp_path, tensorboard=False, peak=peak)
    logger.log(step_record(1.5))
    logger.log(step_record(1.2, step=20))
    assert calls == [1] and peak.best == 1e9  # measured once, the higher figure kept
    assert [r["mfu"] for r in logged(tmp_path)] == [None, None]
    assert MFU_NOT_AVAILABLE in logger.postfix()


def test_the_progress_line_never_shows_more_than_100_percent(tmp_path, capsys):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    progress = Progress(total=20, initial=0, logger=logger)
    for step, mfu in ((1, 0.4), (2, 3.1)):
        logger.log(step_record(mfu, step=step))
        progress.update(logged=True)
    progress.close()
    first, second = capsys.readouterr().err.strip().splitlines()
    assert "MFU 40.0%" in first and MFU_NOT_AVAILABLE in second and "310" not in second
