"""Run configs: YAML sections, overrides, unknown keys with did-you-mean, type errors with lines."""

import subprocess
import sys

import pytest

from xmodel2.cli import main
from xmodel2.errors import UserError
from xmodel2.train.engine import lr_schedule
from xmodel2.train.sizing import auto_micro_batch, settle_micro_batch
from xmodel2.train.runconfig import DEFAULT_CONFIG, load_run_config, model_config, run_config_from_dict


def test_default_config_loads_and_resolves():
    run = load_run_config(None, [])
    assert run.stage_steps() == [480, 120]
    assert run.resolve_path("corpus/wiki-train.jsonl.gz").is_file()  # shipped in the package
    config = model_config(run, vocab_size=4096)
    assert (config.hidden_size, config.num_layers, config.vocab_size) == (256, 8, 4096)
    schedule = lr_schedule(run)
    assert (schedule.warmup_steps, schedule.decay_start, schedule.half_life) == (40, 480, 24)
    assert schedule.shape == "exponential"


@pytest.mark.parametrize("steps", [2, 3, 7, 40, 41, 600, 1001])
def test_train_steps_alone_scales_the_default_run(steps):
    run = load_run_config(None, [f"--train.steps={steps}"])
    stable, decay = run.stage_steps()
    assert stable + decay == steps and min(stable, decay) >= 1
    schedule = lr_schedule(run)
    assert schedule.warmup_steps < schedule.decay_start == stable  # the stable stage keeps a peak-LR step
    assert schedule.half_life == pytest.approx(decay / 5)  # 5 halvings over the decay at any length
    # Fractions are settled when the config is read: the run records plain step counts.
    assert run.stages[1].steps == decay and run.stages[1].decay.halvings is None
    assert run.to_dict()["train"]["warmup_steps"] == schedule.warmup_steps


def test_absolute_steps_and_half_life_still_work():
    run = load_run_config(None, ["--train.steps=300", "--stages.1.steps=50", "--train.warmup_steps=7",
                                 "--stages.1.decay.halvings=null", "--stages.1.decay.half_life=20"])
    assert run.stage_steps() == [250, 50]
    schedule = lr_schedule(run)
    assert (schedule.warmup_steps, schedule.decay_start, schedule.half_life) == (7, 250, 20)


def test_settled_config_is_a_fixed_point():
    run = load_run_config(None, ["--train.steps=37"])
    again = run_config_from_dict(run.to_dict())
    assert again.to_dict() == run.to_dict()
    assert lr_schedule(again) == lr_schedule(run)


def test_default_micro_batch_splits_the_global_batch_over_ranks():
    run = load_run_config(None, [])
    assert run.train.micro_batch_size == "auto"
    config = model_config(run, vocab_size=4096)
    # Memory no object (or unknown): the whole per-rank batch in one micro-batch.
    assert [auto_micro_batch(run, config, ranks, None) for ranks in (1, 2, 4)] == [16, 8, 4]
    # Room for about 5 sequences in half the memory: the largest divisor of the per-rank batch that fits.
    from xmodel2.train.hardware import training_step_bytes
    five = 2 * sum(training_step_bytes(config, 5, run.data.seq_len, run.train.precision).values())
    assert [auto_micro_batch(run, config, ranks, five) for ranks in (1, 2, 4)] == [4, 4, 4]
    with pytest.raises(UserError, match="train.batch_size: a global batch of 16 sequences does not split "
                                        "evenly over 3 ranks"):
        auto_micro_batch(run, config, 3, None)
    scheduled = load_run_config(None, ["--train.batch_schedule=[[0, 8], [100, 24]]"])
    assert auto_micro_batch(scheduled, config, 2, None) == 4  # divides both 8/2 and 24/2


def test_explicit_micro_batch_is_kept_and_checked():
    import torch

    run = load_run_config(None, ["--train.micro_batch_size=4"])
    assert settle_micro_batch(run, torch.device("cpu"), 2).train.micro_batch_size == 4
    with pytest.raises(UserError, match=r"train.batch_size: a global batch of 16 sequences does not split "
                                        r"into micro-batches of 4 \(train.micro_batch_size\) on 8 rank\(s\)"):
        settle_micro_batch(run, torch.device("cpu"), 8)


def test_overrides_change_values():
    run = load_run_config(None, ["--train.steps=900", "--train.seed", "3", "--checkpoint.every=50",
                                 "--train.lr=0.02", "--model.mup.scale_emb=8"])
    assert (run.train.steps, run.train.seed, run.checkpoint.every, run.train.lr) == (900, 3, 50, 0.02)
    assert run.stage_steps() == [720, 180]
    assert model_config(run, 100).mup.scale_emb == 8


@pytest.mark.parametrize("override, message", [
    (["--train.lrr=0.1"], "--train.lrr=0.1: unknown key train.lrr (did you mean 'lr'?)"),
    (["--trian.steps=5"], "--trian.steps=5: unknown key trian (did you mean 'train'?)"),
    (["--train.steps=abc"], "--train.steps=abc: must be an integer, got 'abc'"),
    (["--model.hiden_size=64"], "unknown key model.hiden_size (did you mean 'hidden_size'?)"),
    (["--train.steps=1"], "--train.steps=1: train.steps=1 leaves no steps for stage 'stable' after the "
                          "other stages' 1"),
    (["--stages.1.steps=1.5"], "--stages.1.steps=1.5: stages.1.steps: must be a whole number of steps >= 1 "
                               "or a fraction of train.steps in (0, 1), got 1.5"),
    (["--stages.1.steps=0"], "--stages.1.steps=0: must be an integer > 0, got 0"),
    (["--stages.0.steps=0.9"], "--stages.0.steps=0.9: stages add up to 660 steps but train.steps=600"),
    (["--stages.1.steps=700"], "train.steps=600 leaves no steps for stage 'stable' after the other stages' 700"),
    (["--stages.1.decay.half_life=500"], "--stages.1.decay.half_life=500: stages.1.decay: give half_life "
                                         "(steps) or halvings, not both"),
    (["--train.warmup_steps=2.5"], "--train.warmup_steps=2.5: train.warmup_steps: must be a whole number"),
    (["--train.micro_batch_size=big"], "--train.micro_batch_size=big: train.micro_batch_size: must be an "
                                       "integer >= 1 or auto, got 'big'"),
    (["--train.micro_batch_size=0"], "--train.micro_batch_size=0: must be an integer >= 1, got 0"),
    (["--train.precision=fp16"], "--train.precision=fp16: must be auto, bf16 or fp32, got 'fp16'"),
    (["--train.lr=nan"], "--train.lr=nan: must be a finite number > 0, got nan"),
    (["--train.beta2", "1"], "--train.beta2=1: must be a finite number in [0, 1), got 1"),
    (["--stages.0.mixture.math=-0.1"], "--stages.0.mixture.math=-0.1: must be a finite number >= 0"),
    (["--stages.0.mixture.math=0.5"], "--stages.0.mixture.math=0.5: stages.0.mixture: shares add up"),
    (["--train.batch_schedule=[[0, 8], [0, 16]]"], "steps must be strictly increasing"),
    (["--stages.1.decay.floor=2"], "--stages.1.decay.floor=2: must be a finite number in [0, 1]"),
])
def test_bad_overrides_are_named(override, message):
    with pytest.raises(UserError) as info:
        run = load_run_config(None, override)
        model_config(run, 100)
    assert message in str(info.value)


def test_yaml_errors_carry_file_and_line(tmp_path):
    bad = tmp_path / "run.yaml"
    text = DEFAULT_CONFIG.read_text().replace("  warmup_steps:", "  warmup_stpes:")
    bad.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith("  warmup_stpes:"))
    with pytest.raises(UserError) as info:
        load_run_config(bad, [])
    assert str(info.value).startswith(f"{bad}:{line}: unknown key train.warmup_stpes")
    assert "did you mean 'warmup_steps'" in str(info.value)


def test_held_out_source_refused_in_mixture(tmp_path):
    text = DEFAULT_CONFIG.read_text().replace("math: 0.05}", "wiki-test: 0.05}")
    bad = tmp_path / "leak.yaml"
    bad.write_text(text)
    with pytest.raises(UserError, match="held out"):
        load_run_config(bad, [])


def test_cli_reports_unknown_key_with_exit_2(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "o"), "--train.stepz=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["xmodel2: error: --train.stepz=3: unknown key train.stepz (did you mean 'steps'?)"]
    assert not (tmp_path / "o").exists()


def test_cli_missing_config_file_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xmodel2", "pretrain", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"xmodel2: error: {tmp_path / 'nope.yaml'}: config file not found"


def test_fragment_merges_before_overrides(tmp_path):
    fragment = tmp_path / "best_config.yaml"
    fragment.write_text("model:\n  mup: {scale_emb: 16, dim_model_base: 64}\ntrain: {lr: 0.015}\n")
    run = load_run_config(None, ["--train.lr=0.02"], fragments=[fragment])
    config = model_config(run, 100)
    assert (config.mup.scale_emb, config.mup.dim_model_base, config.mup.scale_depth) == (16, 64, 1.4)
    assert run.train.lr == 0.02  # the command line still wins
    assert config.hidden_size == 256  # the rest of the default is kept
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lrr: 0.1}\n")
    with pytest.raises(UserError, match="unknown key train.lrr"):
        load_run_config(None, [], fragments=[bad])


@pytest.mark.parametrize("text, message", [
    ("train: {lr: 0.1}\ntrain: {steps: 5}\n", "run.yaml:2: duplicate key train (first at line 1)"),
    ("train:\n  lr: 0.1\n  lr: 0.2\n", "run.yaml:3: duplicate key train.lr (first at line 2)"),
    ("a: &a [1, 2]\nb: [*a, *a]\n", "run.yaml:2: invalid YAML: aliases (*name) are not allowed"),
    ("train:\n  eps: 0\n", "run.yaml:2: train.eps: must be a finite number > 0, got 0"),
])
def test_config_files_refused_with_file_and_line(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_run_config(path, [])
    assert str(info.value).startswith(str(tmp_path / message))


def test_invalid_utf8_in_a_config_names_the_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"train:\n  lr: 0.1  # caf\xe9\n")
    with pytest.raises(UserError, match=r"run.yaml:2: not UTF-8 text \(byte 0xe9\)"):
        load_run_config(path, [])


def test_an_override_of_a_value_in_the_file_is_blamed_not_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(DEFAULT_CONFIG.read_text())
    with pytest.raises(UserError) as info:
        load_run_config(path, ["--checkpoint.every=0"])
    assert str(info.value) == "--checkpoint.every=0: must be an integer >= 1, got 0"
