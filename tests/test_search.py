"""The Bayesian μP search: real (tiny) nano-proxy trials in an Optuna study that resumes, its
outputs (database, plots, importances, a config fragment pretrain accepts), pruning, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from xmodel2.cli import main  # noqa: E402
from xmodel2.train.runconfig import load_run_config, model_config  # noqa: E402
from xmodel2.train.study import open_storage  # noqa: E402
from xmodel2.windtunnel.proxy import ProxySettings, prepare_proxy_data  # noqa: E402
from xmodel2.windtunnel.search import (SearchSettings, config_fragment, fragment_overrides,  # noqa: E402
                                       open_study, run_trials)

TINY = ["--steps", "4", "--eval-every", "2", "--seq-len", "16", "--batch-size", "2",
        "--vocab-size", "1024"]


@pytest.fixture(scope="module")
def cache(proxy_cache: Path) -> Path:
    return proxy_cache


@pytest.fixture(scope="module")
def searched(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    out = tmp_path_factory.mktemp("search")
    first = main(["windtunnel", "search", "--trials", "3", "--workers", "1", "--out", str(out),
                  "--cache", str(cache), *TINY])
    trials_after_first = len(json.loads((out / "search.json").read_text())["trial_rows"])
    # --trials is the study's total: 5 resumes the study of 3 and adds 2
    second = main(["windtunnel", "search", "--trials", "5", "--workers", "2", "--out", str(out),
                   "--cache", str(cache), *TINY])
    assert (first, second) == (0, 0)
    return out, trials_after_first, len(json.loads((out / "search.json").read_text())["trial_rows"])


def load(out: Path):
    return optuna.load_study(study_name="mup-search", storage=open_storage(f"sqlite:///{out / 'study.db'}"))


def test_three_trials_then_two_more_in_the_same_study(searched: tuple[Path, int, int]) -> None:
    out, first, total = searched
    assert (first, total) == (3, 5)
    study = load(out)
    assert len(study.trials) == 5
    assert all(t.state.name == "COMPLETE" for t in study.trials)  # 5 trials: pruner still warming up
    # every trial is a real run scored by held-out loss, with its intermediate reports
    for t in study.trials:
        # finite: a sampled config far from the good region (dim_model_base 1024 on a 256-wide
        # model, scale_emb 20) may end 4 steps at a loss of 40, but no trial is lost or NaN
        assert 0 < t.value < math.inf and sorted(t.intermediate_values) == [2]
        assert set(t.params) == {"scale_emb", "dim_model_base", "scale_depth", "lr"}
        assert 2 <= t.params["scale_emb"] <= 20
        assert t.params["dim_model_base"] in (32, 64, 128, 256, 512, 1024)
        assert 0.001 <= t.params["lr"] <= 0.1 and 1.0 <= t.params["scale_depth"] <= 5.0
    # a resumed study does not replay the first invocation's random start-up samples
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == len(params)


def test_outputs_plots_importances_and_timing(searched: tuple[Path, int, int]) -> None:
    out = searched[0]
    for name in ("history.png", "good_region.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "search.json").read_text())
    assert set(summary["importances"]) == {"scale_emb", "dim_model_base", "scale_depth", "lr"}
    assert summary["seconds_per_trial"]["complete"]["count"] == 5
    best = min(r["value"] for r in summary["trial_rows"] if r["state"] == "COMPLETE")
    assert summary["best"]["value"] == best


def test_config_fragment_is_accepted_by_pretrain(searched: tuple[Path, int, int]) -> None:
    out = searched[0]
    fragment = yaml.safe_load((out / "best_config.yaml").read_text())
    params = json.loads((out / "search.json").read_text())["best"]["params"]
    assert fragment == config_fragment(params)
    run = load_run_config(None, fragment_overrides(fragment))
    config = model_config(run, 4096)
    assert config.hidden_size == 256  # the default config's nano model, with the found μP values
    assert config.mup.scale_emb == params["scale_emb"]
    assert config.mup.dim_model_base == params["dim_model_base"]
    assert config.mup.scale_depth == pytest.approx(params["scale_depth"])
    assert run.train.lr == pytest.approx(params["lr"])


def test_pruner_stops_a_trial_behind_the_median(cache: Path, tmp_path: Path) -> None:
    data = prepare_proxy_data(cache, 1024)
    settings = SearchSettings(proxy=ProxySettings(steps=4, eval_every=2, seq_len=16, batch_size=2),
                              warmup_trials=1)
    url = f"sqlite:///{tmp_path / 'prune.db'}"
    study = open_study(url, "prune", settings)
    good = {"scale_emb": 12, "dim_model_base": 64, "scale_depth": 1.4, "lr": 0.02}
    study.enqueue_trial(good)
    study.enqueue_trial(good | {"lr": 0.001})  # a tiny LR trails at the first report
    run_trials(url, "prune", 2, data, settings)
    states = [t.state.name for t in load_named(url, "prune").trials]
    assert states == ["COMPLETE", "PRUNED"]


def load_named(url: str, name: str):
    return optuna.load_study(study_name=name, storage=open_storage(url))


def test_resuming_with_other_proxy_settings_is_refused(searched: tuple[Path, int, int], cache: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = searched[0]
    args = ["windtunnel", "search", "--trials", "1", "--out", str(out), "--cache", str(cache), *TINY]
    assert main([*args, "--steps", "6"]) == 2
    err = capsys.readouterr().err.strip()
    assert "other proxy settings" in err and "steps" in err and "\n" not in err


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "--trials"),
    (["--storage", "nosuchdb://x/y"], "--storage"),
    (["--preset", "nanoo"], "did you mean 'nano'"),
    (["--eval-every", "50", "--steps", "10"], "--eval-every"),
])
def test_bad_arguments_are_one_line_errors(args: list[str], message: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    assert main(["windtunnel", "search", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xmodel2: error:") and message in err and "\n" not in err


def test_subprocess_help_and_error() -> None:
    help_text = subprocess.run([sys.executable, "-m", "xmodel2", "windtunnel", "search", "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "--storage" in help_text and "postgresql" in help_text
    bad = subprocess.run([sys.executable, "-m", "xmodel2", "windtunnel", "search", "--trials", "-1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0


def test_report_handles_diverged_trials(tmp_path: Path) -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from xmodel2.windtunnel.search_report import write_report

    space = {"scale_emb": IntDistribution(2, 20), "dim_model_base": CategoricalDistribution([32, 64, 128]),
             "scale_depth": FloatDistribution(1.0, 5.0, step=0.1), "lr": FloatDistribution(0.001, 0.1, step=0.001)}
    study = optuna.create_study(study_name="report")
    for i in range(12):
        params = {"scale_emb": 2 + i, "dim_model_base": (32, 64, 128)[i % 3],
                  "scale_depth": 1.0 + 0.3 * i, "lr": 0.005 * (i + 1)}
        value = float("inf") if i == 11 else 5.0 + abs(i - 4) * 0.1  # the largest LR diverged
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=value))
    summary = write_report(study, tmp_path, "memory", None, 0.0)
    assert summary["best"]["trial"] == 4 and summary["best"]["value"] == pytest.approx(5.0)
    assert json.loads((tmp_path / "search.json").read_text())["trial_rows"][11]["value"] is None
    assert summary["good_threshold"] == pytest.approx(5.1)  # the best quarter of 11 finite trials
    for name in ("history.png", "good_region.png", "best_config.yaml"):
        assert (tmp_path / name).stat().st_size > 0
