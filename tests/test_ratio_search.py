"""`xmodel2 ratio-search` for real on a tiny model: stable stage, decay branches in two worker
processes, an Optuna study that resumes, the best mixture as a runnable config, and the plot."""

from __future__ import annotations

import gzip
import os
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from xmodel2.cli import main
from xmodel2.data.corpus import corpus_file
from xmodel2.data.sft import BUNDLED_DIR
from xmodel2.errors import UserError
from xmodel2.ratio_search.plot import fit_quadratic, plot_search
from xmodel2.ratio_search.share_interval import share_interval
from xmodel2.train.runconfig import load_run_config


def slice_gz(source: Path, out: Path, limit: int) -> Path:
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        out.write_text("".join(line for _, line in zip(range(limit), handle)), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ratio")
    slice_gz(corpus_file("wiki-train"), root / "wiki.jsonl", 300)
    slice_gz(corpus_file("wiki-validation"), root / "wiki-validation.jsonl", 30)
    sft = []
    for name, category in (("math-arithmetic", "math"), ("logic-generated", "logic"), ("knowledge-wordnet", "knowledge")):
        sft += ["--sft", f"{category}={slice_gz(BUNDLED_DIR / f'{name}.jsonl.gz', root / f'{category}.jsonl', 200)}"]
    config = root / "tiny.yaml"
    config.write_text(textwrap.dedent("""\
        model: {hidden_size: 64, intermediate_size: 160, num_layers: 2, num_heads: 2, num_kv_heads: 1,
                max_position_embeddings: 64, mup: {dim_model_base: 32}}
        tokenizer: {vocab_size: 700, max_sentences: 20000}
        data:
          seq_len: 32
          workers: 1
          validation: wiki-validation
          validation_sequences: 8
          sources:
            wiki: {inputs: [wiki.jsonl]}
            wiki-validation: {inputs: [wiki-validation.jsonl], held_out: true}
        train: {steps: 30, lr: 0.01, warmup_steps: 4, batch_size: 8, micro_batch_size: 8, precision: fp32,
                log_every: 5, val_every: 10, seed: 0}
        stages:
          - {name: stable, mixture: {wiki: 1.0}}
          - {name: decay, steps: 10, decay: {shape: exponential, half_life: 3}, mixture: {wiki: 1.0}}
        checkpoint: {every: 10, keep: 1}
        """))
    out = root / "search"
    args = ["ratio-search", str(config), "--out", str(out), *sft, "--shares", "0,0.9", "--mixes", "uniform,reasoning",
            "--held-out-percent", "20", "--workers", "2", "--stable-steps", "16"]
    assert main(args) == 0
    return config, out, args


def test_search_runs_every_trial_and_sft_beats_no_sft(setup):
    _, out, _ = setup
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(trials) >= 4
    assert {(t["sft_share"], t["label"]) for t in trials} == {(0.0, "uniform"), (0.0, "reasoning"),
                                                              (0.9, "uniform"), (0.9, "reasoning")}
    logs = (out / "worker-0.log").read_text() + (out / "worker-1.log").read_text()
    assert "trial " in (out / "worker-0.log").read_text() and "trial " in (out / "worker-1.log").read_text(), logs
    with_sft = min(t["sft_val_loss"] for t in trials if t["sft_share"] == 0.9)
    without = max(t["sft_val_loss"] for t in trials if t["sft_share"] == 0.0)
    assert with_sft < without - 0.1  # held-out reasoning/instruction loss
    assert all(t["sft_answer_loss"] > 0 and t["pretrain_val_loss"] > 0 for t in trials)
    from xmodel2.train.checkpoint import list_checkpoints

    assert [p.name for p in list_checkpoints(out / "stable")] == ["step-00000016"]  # --stable-steps 16
    for t in trials:  # branches keep no checkpoints unless asked
        assert not (out / "trials" / f"trial-{t['number']:04d}" / "checkpoints").exists()
    sft_mixture = {k: v for k, v in trials[0]["mixture"].items() if k.startswith("sft-")}
    assert sum(sft_mixture.values()) == pytest.approx(trials[0]["sft_share"], abs=1e-6)


def test_best_mixture_is_a_config_pretrain_accepts(setup):
    _, out, _ = setup
    run = load_run_config(out / "best-mixture.yaml", [])
    decay = run.stages[-1]
    assert decay.decay.shape == "exponential"
    assert any(name.startswith("sft-") for name in decay.mixture)
    assert sum(decay.mixture.values()) == pytest.approx(1.0, abs=1e-4)
    assert run.data.sources["sft-validation"].held_out and "sft-validation" not in decay.mixture
    png = (out / "ratio-search.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_rerun_resumes_the_study_without_new_trials(setup, capsys):
    _, out, args = setup
    before = (out / "trials.jsonl").read_text()
    assert main(args) == 0
    assert (out / "trials.jsonl").read_text() == before
    assert "best SFT share:" in capsys.readouterr().out


def test_same_study_with_other_settings_is_refused(setup):
    _, out, args = setup
    changed = [a if a != "0,0.9" else "0,0.5" for a in args]
    assert main(changed) == 2


def test_bad_inputs_are_one_line_errors(setup, tmp_path):
    config, out, _ = setup
    done = subprocess.run([sys.executable, "-m", "xmodel2", "ratio-search", str(config), "--out", str(tmp_path / "o"),
                           "--checkpoint", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"xmodel2: error: {tmp_path / 'missing'}: checkpoint folder not found"
    with pytest.raises(UserError, match="unknown mix"):
        from xmodel2.ratio_search.search import SearchOptions, run_search

        run_search(load_run_config(config, []), tmp_path / "o2", SearchOptions(sft_files=[], mixes=["nope"]))


def test_quadratic_fit_finds_an_interior_optimum():
    shares = [0.0, 0.2, 0.4, 0.6, 0.8]
    values = [(s - 0.6) ** 2 + 3 for s in shares]
    a, b, _ = fit_quadratic(shares, values)
    assert -b / (2 * a) == pytest.approx(0.6)
    assert fit_quadratic([0.1, 0.1, 0.2], [1, 2, 3]) is None


SHARES = np.repeat(np.round(np.arange(10) * 0.1, 1), 2)  # the quick grid: 10 shares x 2 mixes
MIX_OFFSET = np.tile([0.0, 0.01], 10)  # the second mix is a little worse at every share


@pytest.mark.parametrize("noise", [0.02, 0.05])
def test_share_interval_recovers_the_optimum_at_its_stated_coverage(noise):
    rng = np.random.default_rng(11)
    covered, estimates, repeats = 0, [], 200
    for r in range(repeats):
        values = 0.8 * (SHARES - 0.55) ** 2 + 2.0 + MIX_OFFSET + rng.normal(0, noise, SHARES.size)
        interval = share_interval(SHARES, values, resamples=1000, seed=r)
        covered += interval.low <= 0.55 <= interval.high
        estimates.append(interval.estimate)
    # 95% nominal; the percentile bootstrap on 20 trials measured 0.92-0.93 here
    assert 0.88 <= covered / repeats <= 0.99
    assert abs(np.mean(estimates) - 0.55) < 0.02


def test_share_interval_edges_maximizing_and_the_report_range():
    falling = 3.0 - 0.5 * SHARES  # no interior optimum: the best end of the range, exactly
    interval = share_interval(SHARES, falling)
    assert interval.estimate == interval.low == interval.high == pytest.approx(0.9)
    accuracy = -((SHARES - 0.64) ** 2)  # an accuracy objective peaks where a loss bottoms out
    interval = share_interval(SHARES, accuracy, maximize=True)
    assert interval.estimate == pytest.approx(0.64)
    assert interval.report_range_verdict() == "the interval lies inside the report's 60%-69%"
    wide = share_interval(SHARES, accuracy + np.random.default_rng(0).normal(0, 0.05, 20), maximize=True)
    assert wide.low < 0.6 and wide.high > 0.69
    assert wide.report_range_verdict() == "the report's 60%-69% lies inside the interval"
    assert "outside" in share_interval(SHARES, (SHARES - 0.3) ** 2).report_range_verdict()
    assert share_interval([0.1, 0.1, 0.2], [1, 2, 3]) is None
    again = share_interval(SHARES, accuracy + np.linspace(0, 0.01, 20), maximize=True)
    assert again == share_interval(SHARES, accuracy + np.linspace(0, 0.01, 20), maximize=True)  # seeded


def test_plot_draws_the_interval_band(tmp_path):
    values = 0.8 * (SHARES - 0.55) ** 2 + 2.0 + MIX_OFFSET
    trials = [{"sft_share": float(s), "value": float(v), "label": "uniform" if i % 2 == 0 else "reasoning"}
              for i, (s, v) in enumerate(zip(SHARES, values))]
    with_band = plot_search(trials, "loss", tmp_path / "band.png", "t", share_interval(SHARES, values))
    without = plot_search(trials, "loss", tmp_path / "plain.png", "t")
    assert with_band.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert with_band.read_bytes() != without.read_bytes()


def test_branch_accuracy_is_what_xmodel2_eval_reports(setup, tmp_path):
    """A branch is scored by the library function behind `xmodel2 eval`, on the model in memory."""
    from xmodel2.model.folder import load_model_folder
    from xmodel2.ratio_search.scores import eval_accuracy
    from xmodel2.tokenizer import load_tokenizer
    from xmodel2.train.checkpoint import latest_checkpoint

    _, out, _ = setup
    checkpoint = latest_checkpoint(out / "stable")
    task = str(BUNDLED_DIR.parent / "eval" / "arc_easy.jsonl")
    value = eval_accuracy(load_model_folder(checkpoint), load_tokenizer(checkpoint), task, 4, tmp_path / "branch.json")
    assert main(["eval", str(checkpoint), "--tasks", task, "--limit", "4", "--output", str(tmp_path / "cli.json")]) == 0
    branch = json.loads((tmp_path / "branch.json").read_text())["results"]
    cli = json.loads((tmp_path / "cli.json").read_text())["results"]
    assert branch == cli
    assert value == next(r["value"] for r in cli if r["metric"] == "acc")
    assert value in (0.0, 0.25, 0.5, 0.75, 1.0)


def test_branch_refuses_a_bad_task_name_before_training(setup, tmp_path):
    from xmodel2.ratio_search.branch import BranchSettings, branch_template, run_branch
    from xmodel2.train.checkpoint import latest_checkpoint

    config, out, _ = setup
    checkpoint = latest_checkpoint(out / "stable")
    template = branch_template(load_run_config(config, []), checkpoint)
    settings = BranchSettings(run=template.to_dict(), checkpoint=str(checkpoint), out_dir=str(out),
                              eval_tasks="arc_easy:nope")
    with pytest.raises(UserError, match="unknown variant"):
        run_branch(settings, 0.5, {"math": 1.0}, tmp_path / "trial")
    assert not (tmp_path / "trial").exists()


def test_xmodel2_pretrain_runs_the_best_mixture(setup, tmp_path):
    _, out, _ = setup
    args = ["pretrain", str(out / "best-mixture.yaml"), "--out", str(tmp_path / "run"), "--no-progress", "--no-finish",
            f"--tokenizer.path={out / 'stable' / 'tokenizer'}", "--train.steps=8", "--stages.0.steps=4", "--stages.1.steps=4"]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 8 and records[-1]["stage"] == "decay"
    assert any((tmp_path / "run" / "data").glob("sft-*"))
    # the fragment merges into the searched config and gives the same run config
    merged = load_run_config(setup[0], [], fragments=[out / "best-decay-stage.yaml"]).stages
    full = load_run_config(out / "best-mixture.yaml", []).stages
    assert [(s.name, s.steps, s.decay) for s in merged] == [(s.name, s.steps, s.decay) for s in full]
    assert merged[1].mixture == pytest.approx(full[1].mixture, abs=1e-6)


def test_a_branch_equals_pretrain_init_from_with_its_mixture(setup, tmp_path):
    """A branch is a run config trained by the engine from the stable checkpoint: the same config
    under `xmodel2 pretrain --init-from` trains to the same losses, step by step."""
    import yaml

    _, out, _ = setup
    trial = sorted((out / "trials").iterdir())[0]
    resolved = json.loads((trial / "run_config.json").read_text())
    resolved.pop("resolved_model")
    config = tmp_path / "branch.yaml"
    config.write_text(yaml.safe_dump(resolved))
    stable = out / "stable" / "checkpoints" / "step-00000016"
    # One thread, as each of the search's two workers had (threads could reorder float sums).
    proc = subprocess.run([sys.executable, "-m", "xmodel2", "pretrain", str(config), "--init-from", str(stable),
                           "--out", str(tmp_path / "run"), "--no-finish", "--no-progress"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]

    def losses(folder: Path) -> list[tuple]:
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r.get("val_loss")) for r in records]

    branch = losses(trial)
    assert branch and branch[0][0] > 16 and branch[-1][0] == 26
    assert losses(tmp_path / "run") == branch
