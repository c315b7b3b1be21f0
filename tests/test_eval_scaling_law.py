"""The post-training scaling-law fit recovers known constants from synthetic losses."""

import numpy as np
import pytest

from xmodel2.errors import UserError
from xmodel2.eval.scaling_law import fit_law, law, plot_fit

REPORT = dict(a=-0.575, b=1.772, c=32.84)  # the report's WikiText-2 fit


def test_fit_recovers_the_reports_constants_from_noisy_data(tmp_path):
    t = np.arange(1, 2049, dtype=float)
    rng = np.random.default_rng(0)
    losses = law(t, **REPORT) + rng.normal(0, 0.01, size=t.shape)
    fit = fit_law(t, losses)
    for name, true in REPORT.items():
        low, high = fit.intervals[name]
        assert low <= true <= high, (name, true, fit.intervals[name])
        assert getattr(fit, name) == pytest.approx(true, rel=0.05)
    assert fit.r2 > 0.99
    path = plot_fit(t, losses, fit, tmp_path / "law.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_exact_data_gives_exact_constants():
    t = np.arange(1, 200, dtype=float)
    fit = fit_law(t, law(t, a=-0.3, b=2.5, c=5.0))
    assert (fit.a, fit.b, fit.c) == pytest.approx((-0.3, 2.5, 5.0), rel=1e-4)
    assert fit.r2 == pytest.approx(1.0)


def test_too_few_points_is_a_user_error():
    with pytest.raises(UserError, match="at least 4 positions"):
        fit_law(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.5]))
