"""LR transfer: the optimum finder on synthetic curves, the verdict rule, and real tiny sweeps
(proxy training on the bundled corpus) through the CLI, including the grid's edge extension."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xmodel2.cli import main
from xmodel2.windtunnel.intervals import drift_interval, drift_per_doubling, t_interval
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


# ---- the verdict and its intervals -----------------------------------------------------------------

def optima(**arms: list[float | None]) -> dict:
    """One seed's optima per arm, at widths 64, 128, 256."""
    widths = (64, 128, 256)
    return {arm: {w: [None if x is None else Optimum(x, 1.0)] for w, x in zip(widths, xs)}
            for arm, xs in arms.items()}


def test_one_seed_verdict_rules_on_point_drifts() -> None:
    outcome = verdict(optima(mup=[-7, -7.2, -6.9], sp=[-6, -7, -8.2]), 0.25)
    assert outcome.status == "pass" and "one seed" in outcome.reason
    assert outcome.drifts["sp"].mean == pytest.approx(-1.1)
    assert verdict(optima(mup=[-7, -8, -8.5], sp=[-6, -7, -8.2]), 0.25).status == "fail"
    outcome = verdict(optima(mup=[-7, -7, -7], sp=[-7, -7.1, -7.2]), 0.25)
    assert outcome.status == "inconclusive" and "cannot tell" in outcome.reason
    assert verdict(optima(mup=[-7, None, -7], sp=[-6, -7, -8.2]), 0.25).status == "inconclusive"
    edge = optima(mup=[-7, -7, -7], sp=[-6, -7, -8.2])
    edge["mup"][64] = [Optimum(-5, 1.0, edge="high")]
    assert "edge" in verdict(edge, 0.25).reason


def test_t_interval_and_drift_slope() -> None:
    interval = t_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(0.975, 2) = 4.303
    assert interval.mean == pytest.approx(2.0)
    assert interval.high - interval.mean == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert not math.isfinite(t_interval([5.0]).low)
    assert drift_per_doubling({64: -6.0, 128: -7.0, 256: -8.0, 512: -9.0}) == pytest.approx(-1.0)
    assert drift_per_doubling({64: -7.0, 256: -7.0}) == 0.0


WIDTHS = (64, 128, 256, 512)
GRID = [float(x) for x in range(-18, 3)]


def synthetic_optima(rng: np.random.Generator, slope: float, seeds: int, noise: float,
                     loss_noise: float = 0.003) -> dict[int, list[Optimum | None]]:
    """Per-seed optima found by `find_optimum` on noisy parabolic loss curves whose true optimum
    is -7 + slope * log2(width / 64), moved by a seed effect and a per-(width, seed) effect."""
    found: dict[int, list[Optimum | None]] = {w: [] for w in WIDTHS}
    for _ in range(seeds):
        seed_shift = rng.normal(0, noise)
        for w in WIDTHS:
            centre = -7 + slope * math.log2(w / 64) + seed_shift + rng.normal(0, noise)
            losses = [0.3 * (x - centre) ** 2 + 3.0 + rng.normal(0, loss_noise) for x in GRID]
            found[w].append(find_optimum(GRID, losses))
    return found


@pytest.mark.parametrize("slope", [0.0, -0.8])
def test_drift_interval_has_its_stated_coverage(slope: float) -> None:
    rng = np.random.default_rng(1234)
    repeats, covered, estimates = 400, 0, []
    for _ in range(repeats):
        found = synthetic_optima(rng, slope, seeds=3, noise=0.2)
        interval, _ = drift_interval([{w: found[w][s].log2_lr for w in WIDTHS} for s in range(3)])
        covered += interval.contains(slope)
        estimates.append(interval.mean)
    assert 0.92 <= covered / repeats <= 0.98  # 95% nominal; 400 repeats give ±0.022 at 2 sigma
    assert abs(np.mean(estimates) - slope) < 0.03  # unbiased: the known drift is recovered


def test_width_intervals_recover_the_known_optimum() -> None:
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(200):
        found = synthetic_optima(rng, 0.0, seeds=4, noise=0.2)
        covered += t_interval([o.log2_lr for o in found[256]]).contains(-7.0)
    assert 0.9 <= covered / 200 <= 0.99


def test_verdict_passes_on_clean_data_and_turns_inconclusive_when_noisy() -> None:
    rng = np.random.default_rng(3)
    clean = verdict({"mup": synthetic_optima(rng, 0.0, 5, 0.05), "sp": synthetic_optima(rng, -1.0, 5, 0.05)}, 0.25)
    assert clean.status == "pass", clean.reason
    assert clean.drifts["mup"].within(-0.25, 0.25) and not clean.drifts["sp"].contains(0.0)
    noisy = verdict({"mup": synthetic_optima(rng, 0.0, 5, 1.0), "sp": synthetic_optima(rng, -1.0, 5, 1.0)}, 0.25)
    assert noisy.status == "inconclusive", noisy.reason
    assert "not inside" in noisy.reason or "contains 0" in noisy.reason
    drifting = verdict({"mup": synthetic_optima(rng, -1.0, 5, 0.05), "sp": synthetic_optima(rng, -1.0, 5, 0.05)},
                       0.25)
    assert drifting.status == "fail"


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


def test_cli_tiny_sweep_with_seeds_writes_intervals_table_and_plot(cache: Path, tmp_path: Path) -> None:
    code = main(["windtunnel", "lr-transfer", "--widths", "32,64", "--lrs", "2^-8,2^-6,2^-4", "--seeds", "2",
                 "--max-extensions", "0", "--out", str(tmp_path), "--cache", str(cache), *TINY])
    result = json.loads((tmp_path / "lr_transfer.json").read_text())
    assert code == (0 if result["verdict"] == "pass" else 1)
    assert len(result["runs"]) == 2 * 2 * 2 * 3 and result["seeds"] == [0, 1]
    assert {r["arm"] for r in result["runs"]} == {"mup", "sp"}
    # the two seeds are different replications, not copies
    by_seed = {s: [r["val_loss"] for r in result["runs"] if r["seed"] == s] for s in (0, 1)}
    assert by_seed[0] != by_seed[1]
    for arm in ("mup", "sp"):
        assert set(result["optima"][arm]) == {"32", "64"}
        for optimum in result["optima"][arm].values():
            xs = [o["log2_lr"] for o in optimum["per_seed"]]
            assert len(xs) == 2 and optimum["interval"]["mean"] == pytest.approx(sum(xs) / 2)
            assert optimum["interval"]["low"] <= min(xs) and optimum["interval"]["high"] >= max(xs)
        drift = result["drift"][arm]
        if drift is not None:  # no drift when a curve's best point is on an edge
            assert drift["low"] <= drift["mean"] <= drift["high"] and len(drift["per_seed"]) == 2
    assert (tmp_path / "lr_transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "lr_transfer.txt").read_text()
    assert "verdict:" in table and "t-intervals over the seeds" in table


def test_a_killed_sweep_resumes_from_its_journal_and_more_seeds_add_to_it(cache: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    args = ["windtunnel", "lr-transfer", "--widths", "32,64", "--lrs", "2^-8,2^-6", "--max-extensions", "0",
            "--out", str(tmp_path), "--cache", str(cache), *TINY]
    main([*args, "--seeds", "1"])
    first = json.loads((tmp_path / "lr_transfer.json").read_text())["runs"]
    journal = tmp_path / "lr_transfer_runs.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + 8
    journal.write_text("".join(lines[:-1]) + lines[-1][:20])  # killed while writing the last run
    capsys.readouterr()
    main([*args, "--seeds", "2"])
    assert "7 runs already in" in capsys.readouterr().err  # the cut run and all of seed 1 train
    again = json.loads((tmp_path / "lr_transfer.json").read_text())["runs"]
    losses = lambda runs: sorted((r["arm"], r["width"], r["log2_lr"], r["val_loss"]) for r in runs)  # noqa: E731
    assert losses(r for r in again if r["seed"] == 0) == losses(first)  # the retrained run too
    assert len(again) == 16 and len(journal.read_text().splitlines()) == 1 + 7 + 9
    assert main([*args, "--steps", "7"]) == 2
    assert "made with other settings (proxy differ)" in capsys.readouterr().err


def test_best_lr_on_the_edge_extends_the_grid(cache: Path, tmp_path: Path) -> None:
    # LRs this small all undertrain, so the largest is best and the grid grows upward
    main(["windtunnel", "lr-transfer", "--widths", "32,64", "--lrs", "2^-16,2^-15", "--seeds", "1",
          "--max-extensions", "1", "--out", str(tmp_path), "--cache", str(cache), *TINY])
    result = json.loads((tmp_path / "lr_transfer.json").read_text())
    for arm in ("mup", "sp"):
        for width in (32, 64):
            xs = sorted(r["log2_lr"] for r in result["runs"] if r["arm"] == arm and r["width"] == width)
            assert xs == [-16, -15, -14]
            assert result["optima"][arm][str(width)]["per_seed"][0]["edge"] == "high"  # one extension only
    assert result["verdict"] == "inconclusive" and "edge" in result["reason"]


@pytest.mark.parametrize("args, message", [
    (["--widths", "48"], "multiple of 32"),
    (["--lrs", "fast"], "--lrs"),
    (["--lrs", "0.01,0.01"], "repeated"),
    (["--steps", "0"], "--steps"),
    (["--widths", "64,64"], "two different widths"),
    (["--seeds", "0"], "--seeds"),
    (["--tolerance", "0"], "--tolerance"),
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
