"""LR transfer: the optimum finder on synthetic curves, the verdict rule, and real tiny sweeps
(proxy training on the bundled corpus) through the CLI, including the grid's edge extension."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from xmodel2.cli import main
from xmodel2.windtunnel.lr_transfer import verdict
from xmodel2.windtunnel.optimum import Optimum, find_optimum, parabola_vertex
from xmodel2.windtunnel.proxy import ProxySettings, prepare_proxy_data, proxy_model, train_proxy

TINY = ["--steps", "6", "--seq-len", "16", "--batch-size", "4", "--layers", "1",
        "--vocab-size", "1024", "--workers", "1"]


# ---- the optimum finder ---------------------------------------------------------------------------

@pytest.mark.parametrize("centre", [-7.3, -8.0, -6.55])
def test_parabola_recovers_the_vertex_of_a_quadratic(centre: float) -> None:
    xs = [-10, -9, -8, -7, -6, -5]
    optimum = find_optimum(xs, [0.4 * (x - centre) ** 2 + 3.0 for x in xs])
    assert optimum.edge is None
    assert optimum.log2_lr == pytest.approx(centre)
    assert optimum.loss == pytest.approx(3.0)


def test_parabola_on_an_uneven_grid_and_unsorted_input() -> None:
    xs = [-6.0, -9.0, -7.5, -8.0]
    optimum = find_optimum(xs, [(x + 7.8) ** 2 for x in xs])
    assert optimum.log2_lr == pytest.approx(-7.8)


def test_best_point_on_an_edge_is_flagged() -> None:
    xs = [-10, -9, -8]
    assert find_optimum(xs, [1.0, 2.0, 3.0]) == Optimum(-10, 1.0, edge="low")
    assert find_optimum(xs, [3.0, 2.0, 1.0]) == Optimum(-8, 1.0, edge="high")


def test_diverged_runs_are_never_best_and_give_no_curvature() -> None:
    xs = [-9, -8, -7, -6]
    assert find_optimum(xs, [3.0, 2.0, math.inf, math.nan]) == Optimum(-8, 2.0)
    assert find_optimum(xs, [math.inf] * 4) is None
    # a diverged run beyond the best point stops the edge rule from firing on that side
    assert find_optimum([-9, -8], [2.0, math.inf]).edge == "low"


def test_asymmetric_curve_vertex_stays_between_the_neighbours() -> None:
    xs = [-9, -8, -7]
    optimum = find_optimum(xs, [5.0, 1.0, 1.01])
    assert -8 < optimum.log2_lr < -7
    assert parabola_vertex((0, 1), (1, 1), (2, 1))[0] is None  # flat: no vertex


# ---- the verdict ----------------------------------------------------------------------------------

def optima(**arms: list[float | None]) -> dict:
    widths = (64, 128, 256)
    return {arm: {w: None if x is None else Optimum(x, 1.0) for w, x in zip(widths, xs)}
            for arm, xs in arms.items()}


def test_verdict_rules() -> None:
    status, _, spreads, drifts = verdict(optima(mup=[-7, -7.4, -6.8], sp=[-6, -7, -8.2]), 1.0)
    assert status == "pass"
    assert spreads["mup"] == pytest.approx(0.6) and drifts["sp"] == pytest.approx(-2.2)
    assert verdict(optima(mup=[-7, -8, -8.5], sp=[-6, -7, -8.2]), 1.0)[0] == "fail"
    status, reason, _, _ = verdict(optima(mup=[-7, -7, -7], sp=[-7, -7.5, -7.9]), 1.0)
    assert status == "inconclusive" and "cannot tell" in reason
    assert verdict(optima(mup=[-7, None, -7], sp=[-6, -7, -8.2]), 1.0)[0] == "inconclusive"
    edge = optima(mup=[-7, -7, -7], sp=[-6, -7, -8.2])
    edge["mup"][64] = Optimum(-5, 1.0, edge="high")
    assert "edge" in verdict(edge, 1.0)[1]


# ---- real proxy runs ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache(proxy_cache: Path) -> Path:
    return proxy_cache


def test_proxy_is_deterministic_learns_and_survives_divergence(cache: Path) -> None:
    data = prepare_proxy_data(cache, 1024)  # reuses the cache
    settings = ProxySettings(steps=8, seq_len=16, batch_size=4, eval_every=4, precision="fp32")
    config = proxy_model(64, 1, data.vocab_size, 16)
    first = train_proxy(config, 0.01, data, settings)
    again = train_proxy(config, 0.01, data, settings)
    assert first.val_loss == again.val_loss and not first.diverged
    assert [s for s, _ in first.curve] == [4, 8]
    assert first.val_loss < math.log(data.vocab_size)  # better than a uniform guess
    blown = train_proxy(config.replace(mup={"init_std": 1e30}), 1e3, data, settings)
    assert blown.diverged and blown.val_loss == math.inf
    stopped = train_proxy(config, 0.01, data, settings, report=lambda step, loss: True)
    assert stopped.stopped_early and stopped.steps_done == 4


def test_cli_tiny_sweep_writes_json_table_and_plot(cache: Path, tmp_path: Path) -> None:
    code = main(["windtunnel", "lr-transfer", "--widths", "32,64", "--lrs", "2^-8,2^-6,2^-4",
                 "--max-extensions", "0", "--out", str(tmp_path), "--cache", str(cache), *TINY])
    result = json.loads((tmp_path / "lr_transfer.json").read_text())
    assert code == (0 if result["verdict"] == "pass" else 1)
    assert len(result["runs"]) == 2 * 2 * 3
    assert {r["arm"] for r in result["runs"]} == {"mup", "sp"}
    for arm in ("mup", "sp"):
        assert set(result["optima"][arm]) == {"32", "64"}
        found = [o["log2_lr"] for o in result["optima"][arm].values() if o is not None]
        if len(found) == 2:
            assert result["spread_octaves"][arm] == pytest.approx(max(found) - min(found))
    assert (tmp_path / "lr_transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "verdict:" in (tmp_path / "lr_transfer.txt").read_text()


def test_best_lr_on_the_edge_extends_the_grid(cache: Path, tmp_path: Path) -> None:
    # LRs this small all undertrain, so the largest is best and the grid grows upward
    main(["windtunnel", "lr-transfer", "--widths", "32", "--lrs", "2^-16,2^-15",
          "--max-extensions", "1", "--out", str(tmp_path), "--cache", str(cache), *TINY])
    result = json.loads((tmp_path / "lr_transfer.json").read_text())
    for arm in ("mup", "sp"):
        xs = sorted(r["log2_lr"] for r in result["runs"] if r["arm"] == arm)
        assert xs == [-16, -15, -14]
        assert result["optima"][arm]["32"]["edge"] == "high"  # still rising: one extension only
    assert result["verdict"] == "inconclusive"


@pytest.mark.parametrize("args, message", [
    (["--widths", "48"], "multiple of 32"),
    (["--lrs", "fast"], "--lrs"),
    (["--lrs", "0.01,0.01"], "repeated"),
    (["--steps", "0"], "--steps"),
])
def test_bad_arguments_are_one_line_errors(args: list[str], message: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    assert main(["windtunnel", "lr-transfer", "--quick", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xmodel2: error:") and message in err and "\n" not in err
    assert not (tmp_path / "lr_transfer.json").exists()


def test_subprocess_help_and_bad_grid() -> None:
    help_text = subprocess.run([sys.executable, "-m", "xmodel2", "windtunnel", "lr-transfer", "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "--quick" in help_text and "hours" in help_text
    bad = subprocess.run([sys.executable, "-m", "xmodel2", "windtunnel", "lr-transfer", "--lrs", "-1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
