"""The μP coordinate check: μP passes, every negative control fails where it should, outputs exist.

One small real run (widths 64/128/256, 3 steps, 2 seeds, 16 tokens a row) goes through the CLI
in-process; the other tests read what it wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from xmodel2.cli import main
from xmodel2.windtunnel.coord_check import fit, verdict


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    # Models this small run faster on one thread, and two threads thrash when other test
    # processes share the two cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[int, Path, dict]:
    out = tmp_path_factory.mktemp("coord")
    code = main(["windtunnel", "coord-check", "--widths", "64,128,256", "--steps", "3",
                 "--seeds", "2", "--seq-len", "16", "--out", str(out)])
    return code, out, json.loads((out / "coord_check.json").read_text())


def failures(result: dict, arm: str) -> list[dict]:
    return result["arms"][arm]["failures"]


def test_cli_exits_zero_and_mup_passes(run: tuple[int, Path, dict]) -> None:
    code, _, result = run
    assert code == 0
    assert result["verdict"] == "pass"
    assert result["arms"]["mup"]["passed"], result["arms"]["mup"]["failures"]
    assert "Python language reference" in result["batch_source"]


def test_mup_statistics_are_flat(run: tuple[int, Path, dict]) -> None:
    mup = run[2]["arms"]["mup"]["modules"]
    for module in ("b0.q", "b1.mlp_out", "b1.resid"):
        last = mup[module]["update"][-1]
        assert abs(last["slope"]) <= 0.15 and last["spread"] <= 1.5
        # The LR is large enough that the update is a sizeable part of the activation.
        assert min(last["mean"]) > 0.3 * max(mup[module]["act"][0]["mean"])


@pytest.mark.parametrize("arm", ["sp", "no-lr-scaling", "no-logit-scaling", "no-init-scaling"])
def test_every_control_fails(run: tuple[int, Path, dict], arm: str) -> None:
    result = run[2]
    assert result["arms"][arm]["control"]
    assert not result["arms"][arm]["passed"]


def test_controls_fail_on_their_own_symptom(run: tuple[int, Path, dict]) -> None:
    result = run[2]
    hidden = [m for m in result["modules"] if m != "logits"]

    def failed(arm: str, modules: list[str], statistic: str, steps: range) -> list[dict]:
        return [f for f in failures(result, arm) if f["module"] in modules
                and f["statistic"] == statistic and f["step"] in steps]

    steps = result["settings"]["steps"]
    # Without init scaling (and in SP) hidden activations already grow with width at init.
    for arm in ("sp", "no-init-scaling"):
        grown = failed(arm, hidden, "act", range(0, 1))
        assert grown and all(f["slope"] > 0.15 for f in grown)
    # Without hidden LR scaling the init is μP's, so step 0 passes; the updates grow instead.
    assert not failed("no-lr-scaling", hidden, "act", range(0, 1))
    grown = failed("no-lr-scaling", hidden, "update", range(1, steps + 1))
    assert len(grown) >= 10 and all(f["slope"] > 0.15 for f in grown)
    # Without the 1/m logit multiplier the logits grow with width.
    logits = failed("no-logit-scaling", ["logits"], "update", range(steps, steps + 1))
    assert logits and logits[0]["slope"] > 0.3


def test_outputs_written(run: tuple[int, Path, dict]) -> None:
    _, out, result = run
    for arm in result["arms"]:
        png = out / f"coord_check_{arm}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "coord_check.txt").read_text()
    assert "verdict: PASS" in table and "no-init-scaling" in table
    entry = result["arms"]["mup"]["modules"]["logits"]["act"][0]
    assert set(entry) >= {"step", "mean", "slope", "spread", "checked", "passed"}
    assert not entry["checked"]  # logits at init may shrink; only the last step is judged
    assert not list(out.glob(".*tmp"))


def test_fit_recovers_power_law_and_rejects_non_finite() -> None:
    widths = [64, 128, 256, 512]
    slope, spread = fit(widths, 3.0 * np.array(widths, dtype=float) ** 0.5)
    assert slope == pytest.approx(0.5)
    assert spread == pytest.approx(512 ** 0.5 / 64 ** 0.5)
    assert fit(widths, np.array([1.0, 2.0, float("nan"), 1.0])) == (None, None)
    assert fit(widths, np.array([1.0, 0.0, 1.0, 1.0])) == (None, None)


def test_a_passing_control_makes_it_inconclusive() -> None:
    subject = {"control": False, "passed": True}
    assert verdict({"mup": subject, "c": {"control": True, "passed": False}}) == "pass"
    assert verdict({"mup": subject, "c": {"control": True, "passed": True}}) == "inconclusive"
    assert verdict({"mup": {"control": False, "passed": False},
                    "c": {"control": True, "passed": False}}) == "fail"


def test_depth_sweep_runs(tmp_path: Path, one_thread: None) -> None:
    code = main(["windtunnel", "coord-check", "--depth", "--depths", "2,4", "--width", "64",
                 "--steps", "2", "--seeds", "1", "--seq-len", "8", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "coord_check.json").read_text())
    assert result["axis"] == "depth" and list(result["arms"]) == ["mup", "no-depth-scaling"]
    assert "first.resid" in result["modules"] and "last.resid" in result["modules"]
    assert code == (0 if result["verdict"] == "pass" else 1)


@pytest.mark.parametrize("argv, message", [
    (["--widths", "abc"], "--widths: expected comma-separated integers, got 'abc'"),
    (["--widths", "64"], "needs at least two different values"),
    (["--widths", "64,100"], "width 100 is not a multiple of head_dim 32"),
    (["--depth", "--depths", "1,4"], "--depths must all be at least 2"),
])
def test_bad_arguments_exit_2_with_one_line(argv: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["windtunnel", "coord-check", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xmodel2: error: ") and message in err and "\n" not in err


def test_subprocess_bad_widths() -> None:
    proc = subprocess.run([sys.executable, "-m", "xmodel2", "windtunnel", "coord-check",
                           "--widths", "abc"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "xmodel2: error: --widths: expected comma-separated integers, got 'abc'"]


def test_windtunnel_without_subcommand_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["windtunnel"]) == 2
    assert "coord-check" in capsys.readouterr().err
