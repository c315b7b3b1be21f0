"""Pretraining runs for real on a small slice of the bundled corpus: exact resume after SIGKILL,
crash-safe checkpoints, decay branches, NaN handling, bad input, and the run's outputs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from run_fixtures import fresh_out, pretrain, slice_jsonl
from xmodel2.cli import main
from xmodel2.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

STEPS = 24


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    slice_jsonl("wiki-train", root / "wiki.jsonl", 300)
    slice_jsonl("math", root / "math.jsonl", 80)
    slice_jsonl("wiki-validation", root / "wiki-validation.jsonl", 30)
    config = root / "tiny.yaml"
    config.write_text(textwrap.dedent(f"""\
        model: {{hidden_size: 64, intermediate_size: 160, num_layers: 2, num_heads: 2,
                num_kv_heads: 1, max_position_embeddings: 64,
                mup: {{dim_model_base: 32}}}}
        tokenizer: {{vocab_size: 700, max_sentences: 20000}}
        data:
          seq_len: 32
          workers: 1
          validation: wiki-validation
          validation_sequences: 8
          test: wiki-validation
          sources:
            wiki: {{inputs: [wiki.jsonl]}}
            math: {{inputs: [math.jsonl]}}
            wiki-validation: {{inputs: [wiki-validation.jsonl], held_out: true}}
        train: {{steps: {STEPS}, lr: 0.01, warmup_steps: 4, batch_size: 8, micro_batch_size: 4,
                precision: fp32, log_every: 2, val_every: 6, seed: 0}}
        stages:
          - {{name: stable, mixture: {{wiki: 0.8, math: 0.2}}}}
          - {{name: decay, steps: 8, decay: {{shape: exponential, half_life: 3}},
              mixture: {{wiki: 0.5, math: 0.5}}}}
        checkpoint: {{every: 4, keep: 0}}
        finish: {{sample_prompt: "The", sample_tokens: 8, perplexity_sequences: 8}}
        """))
    # Prepare the tokenizer and shards once; runs copy them so each test trains from scratch.
    warm = root / "warm"
    assert main(["pretrain", str(config), "--out", str(warm), "--train.steps=9", "--stages.1.steps=1",
                 "--no-progress", "--no-finish"]) == 0
    return config


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(out) / "model.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_run_writes_checkpoints_metrics_and_learns(config_path, tmp_path):
    out = fresh_out(config_path, tmp_path, "run")
    assert pretrain(config_path, out) == 0
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(out)]
    assert steps == list(range(4, STEPS + 1, 4))
    folder = latest_checkpoint(out)
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.model",
                 "trainer_state.json", "optimizer.pt", "rng.pt"):
        assert (folder / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and "val_loss" in records[0]
    assert all({"step", "tokens", "loss", "lr"} <= r.keys() for r in records)
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert vals[-1] < vals[0] - 0.5  # held-out loss falls
    # the decay stage's learning rate follows 0.5^((s - S)/T) with S = 16, T = 3
    lrs = {r["step"]: r["lr"] for r in records if r["step"] > 0 and "lr_groups" in r}
    assert lrs[18] == pytest.approx(0.01 * 0.5 ** ((17 - 16) / 3))
    assert [r["stage"] for r in records if r["step"] in (16, 18)] == ["stable", "decay"]


def test_sigkill_mid_training_resumes_bit_identical(config_path, tmp_path):
    reference = fresh_out(config_path, tmp_path, "reference")
    assert pretrain(config_path, reference) == 0

    killed = fresh_out(config_path, tmp_path, "killed")
    command = [sys.executable, "-m", "xmodel2", "pretrain", str(config_path), "--out", str(killed),
               "--no-progress", "--no-finish"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = list_checkpoints(killed)
        if done and int(done[-1].name.split("-")[1]) >= 8:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = int(latest_checkpoint(killed).name.split("-")[1])
    assert interrupted_at < STEPS

    assert pretrain(config_path, killed) == 0  # the same command resumes
    assert_same(final_weights(reference), final_weights(killed))
    ref_opt = torch.load(latest_checkpoint(reference) / "optimizer.pt", weights_only=True)
    got_opt = torch.load(latest_checkpoint(killed) / "optimizer.pt", weights_only=True)
    for key, state in ref_opt["state"].items():
        for name, value in state.items():
            assert torch.equal(value, got_opt["state"][key][name])
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # re-done steps are not logged twice


KILL_DURING_SAVE = """
import os, signal, sys, torch
from xmodel2.model.folder import load_model_folder
from xmodel2.model.mup import build_optimizer
from xmodel2.train import checkpoint
folder, out = sys.argv[1], sys.argv[2]
model = load_model_folder(folder)
optimizer = build_optimizer(model, model.config, lr=0.01)
real_save = torch.save
def save_then_die(obj, path, *a, **k):
    real_save(obj, path, *a, **k)
    os.kill(os.getpid(), signal.SIGKILL)   # killed after the weights, before the state
torch.save = save_then_die
state = checkpoint.TrainingState(step=999, tokens=0, run_config={}, extra={})
checkpoint.save_checkpoint(out, model, optimizer, state, tokenizer_dir=folder)
"""


def test_kill_during_checkpoint_write_keeps_previous(config_path, tmp_path):
    out = fresh_out(config_path, tmp_path, "crash")
    assert pretrain(config_path, out, "--train.steps=12", "--stages.1.steps=4") == 0
    previous = latest_checkpoint(out)
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(previous), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "checkpoints" / ".step-00000999.tmp").exists()  # the half-written one
    assert latest_checkpoint(out) == previous
    from xmodel2.model.folder import load_model_folder

    load_model_folder(previous)  # still a complete, loadable model folder
    # and a resumed run continues from it, cleaning up the temporary folder
    assert pretrain(config_path, out, "--train.steps=16", "--stages.1.steps=4") == 0
    assert latest_checkpoint(out).name == "step-00000016"


def test_decay_branch_reproduces_continuous_run(config_path, tmp_path):
    continuous = fresh_out(config_path, tmp_path, "continuous")
    assert pretrain(config_path, continuous) == 0
    stable_end = continuous / "checkpoints" / f"step-{STEPS - 8:08d}"
    branch = fresh_out(config_path, tmp_path, "branch")
    assert pretrain(config_path, branch, "--init-from", str(stable_end)) == 0
    assert [p.name for p in list_checkpoints(branch)][0] == f"step-{STEPS - 4:08d}"
    assert_same(final_weights(continuous), final_weights(branch))
    # a branch with another decay mixture diverges from it (the data really changed)
    other = fresh_out(config_path, tmp_path, "other")
    assert pretrain(config_path, other, "--init-from", str(stable_end),
                    "--stages.1.mixture.wiki=0.1", "--stages.1.mixture.math=0.9") == 0
    assert not torch.equal(final_weights(other)["model.norm.weight"],
                           final_weights(continuous)["model.norm.weight"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(config_path, tmp_path, capsys):
    out = fresh_out(config_path, tmp_path, "nan")
    code = pretrain(config_path, out, "--train.lr=1e30", "--train.grad_clip=0")
    err = capsys.readouterr().err
    assert code == 2
    message = [line for line in err.splitlines() if line.startswith("xmodel2: error:")]
    assert len(message) == 1 and "at step" in message[0] and "nan" in message[0].lower()
    for folder in list_checkpoints(out):
        weights = load_file(str(folder / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values())


def test_resume_refuses_a_different_model(config_path, tmp_path, capsys):
    out = fresh_out(config_path, tmp_path, "mismatch")
    assert pretrain(config_path, out, "--train.steps=12", "--stages.1.steps=4") == 0
    assert pretrain(config_path, out, "--model.hidden_size=128") == 2
    assert "model config differs" in capsys.readouterr().err


def test_missing_input_is_one_line_exit_2(config_path, tmp_path):
    bad = config_path.parent / "bad.yaml"  # inputs resolve next to the config
    bad.write_text(config_path.read_text().replace("[math.jsonl]", "[no-such-file.jsonl]"))
    bad_out = tmp_path / "bad-out"
    proc = subprocess.run([sys.executable, "-m", "xmodel2", "pretrain", str(bad), "--out", str(bad_out),
                           "--no-progress"], capture_output=True, text=True,
                          cwd=config_path.parent)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith("xmodel2: error:") and "no-such-file.jsonl" in lines[-1]
    assert not list(bad_out.glob("checkpoints/*"))


def test_finish_prints_sample_perplexity_and_plot(config_path, tmp_path, capsys):
    out = fresh_out(config_path, tmp_path, "finish")
    assert main(["pretrain", str(config_path), "--out", str(out), "--no-progress",
                 "--train.steps=12", "--stages.1.steps=4"]) == 0
    printed = capsys.readouterr().out
    assert "held-out perplexity" in printed and "sample: The" in printed
    assert (out / "loss.png").stat().st_size > 10_000
    state = load_checkpoint(latest_checkpoint(out), load_model_for(out), None)
    assert state.step == 12 and state.tokens == 12 * 8 * 32


# The embedded default's way of stating lengths: fractions of train.steps and halvings of the decay;
# and a small share, which a 2-step run would cut below one sequence (it gets one).
AS_FRACTIONS = ("--stages.1.steps=0.2", "--train.warmup_steps=0.0667", "--stages.1.decay.half_life=null",
                "--stages.1.decay.halvings=5", "--train.micro_batch_size=auto",
                "--stages.0.mixture.wiki=0.95", "--stages.0.mixture.math=0.05")


@pytest.mark.parametrize("steps, stable, warmup", [(2, 1, 0), (16, 13, 1)])
def test_train_steps_alone_scales_a_run_of_fractions(config_path, tmp_path, steps, stable, warmup):
    out = fresh_out(config_path, tmp_path, f"steps-{steps}")
    assert pretrain(config_path, out, *AS_FRACTIONS, f"--train.steps={steps}") == 0
    recorded = json.loads((out / "run_config.json").read_text())
    assert [stage["steps"] for stage in recorded["stages"]] == [stable, steps - stable]
    assert recorded["stages"][1]["decay"]["half_life"] == pytest.approx((steps - stable) / 5)
    assert (recorded["train"]["warmup_steps"], recorded["train"]["micro_batch_size"]) == (warmup, 8)
    state = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())
    assert state["step"] == steps and state["tokens"] == steps * 8 * 32
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = next(r for r in records if r["step"] == steps and "lr_groups" in r)
    decay = steps - stable  # the LR halves 5 times over the decay, whatever its length
    assert last["stage"] == "decay" and last["lr"] == pytest.approx(0.01 * 0.5 ** ((decay - 1) / (decay / 5)))


def load_model_for(out: Path):
    from xmodel2.model.folder import load_model_folder

    return load_model_folder(latest_checkpoint(out))


def test_batch_size_schedule_by_gradient_accumulation(config_path, tmp_path):
    out = fresh_out(config_path, tmp_path, "batch-schedule")
    assert pretrain(config_path, out, "--train.steps=12", "--stages.1.steps=4",
                    "--train.batch_schedule=[[0, 4], [6, 8]]") == 0
    state = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())
    assert state["tokens"] == (6 * 4 + 6 * 8) * 32  # micro-batch 4: 1 then 2 micro-batches


def test_prompt_masking_trains_on_assistant_tokens_only(config_path, tmp_path):
    from xmodel2.data.mixture import MixtureDataset, SourceSpec
    from xmodel2.data.prepare import prepare
    from xmodel2.data.sft_mask import IGNORE_INDEX, shard_assistant_mask
    from xmodel2.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(config_path.parent / "warm" / "tokenizer")
    chats = [[{"role": "user", "content": f"What is {a} plus {a}?"},
              {"role": "assistant", "content": f"{a} plus {a} is {2 * a}."}] for a in range(40)]
    sft = config_path.parent / "sft-chat.jsonl"
    sft.write_text("".join(json.dumps({"text": tokenizer.apply_chat_template(c)}) + "\n" for c in chats))
    shard = tmp_path / "sft-shard"
    prepare([str(sft)], str(config_path.parent / "warm" / "tokenizer"), shard, workers=1, progress=False)
    mask = shard_assistant_mask(shard, tokenizer)
    data = MixtureDataset([SourceSpec("sft", str(shard), 2000, target_mask=mask)], seq_len=32, seed=0)
    inputs, targets = data.training_pair(range(8))
    block = data.sequences(range(8))
    kept = targets != IGNORE_INDEX
    assert 0 < kept.float().mean() < 1  # some targets are prompts, some answers
    assert torch.equal(targets[kept], block[:, 1:][kept]) and torch.equal(inputs, block[:, :-1])
    # an <|im_start|> always opens a turn header, never a target; <|im_end|> closes answers too
    assert not kept[targets == tokenizer.im_start_id].any()
    assert kept[targets == tokenizer.im_end_id].any()

    # and a run whose decay stage trains on masked SFT text completes
    text = config_path.read_text().replace(
        "    wiki-validation: {inputs: [wiki-validation.jsonl], held_out: true}",
        "    wiki-validation: {inputs: [wiki-validation.jsonl], held_out: true}\n"
        "    sft: {inputs: [sft-chat.jsonl], mask_prompts: true}").replace(
        "mixture: {wiki: 0.5, math: 0.5}", "mixture: {wiki: 0.5, sft: 0.5}")
    masked = config_path.parent / "masked.yaml"
    masked.write_text(text)
    out = fresh_out(config_path, tmp_path, "masked")
    assert pretrain(masked, out, "--train.steps=12", "--stages.1.steps=4") == 0
    assert latest_checkpoint(out).name == "step-00000012"


def test_in_loop_task_scores_are_logged_and_plotted(config_path, tmp_path, capsys):
    """`train.eval_tasks` scores tasks on the model in memory at the requested steps (and the
    end), as `xmodel2 eval` would score them, into metrics.jsonl and the plot's second panel."""
    from xmodel2.eval.runner import task_accuracies
    from xmodel2.tokenizer import load_tokenizer
    from xmodel2.train.metrics import read_metrics

    out = fresh_out(config_path, tmp_path, "scored")
    assert main(["pretrain", str(config_path), "--out", str(out), "--no-progress", "--train.steps=6",
                 "--stages.1.steps=2", "--train.eval_tasks=[arc_easy,hellaswag]", "--train.eval_every=4",
                 "--train.eval_limit=12", "--checkpoint.every=4"]) == 0
    scored = {r["step"]: {k: v for k, v in r.items() if k.startswith("eval/")}
              for r in read_metrics(out / "metrics.jsonl") if any(k.startswith("eval/") for k in r)}
    assert sorted(scored) == [4, 6]
    assert all(set(row) == {"eval/arc_easy", "eval/hellaswag"} and all(0 <= v <= 1 for v in row.values())
               for row in scored.values())
    final = load_model_for(out)
    load_checkpoint(latest_checkpoint(out), final, None)
    assert task_accuracies(final, load_tokenizer(out / "tokenizer"), ["arc_easy", "hellaswag"], 12) == {
        task.removeprefix("eval/"): value for task, value in scored[6].items()}
    assert (out / "loss.png").stat().st_size > 10_000
    capsys.readouterr()
    assert main(["pretrain", str(config_path), "--out", str(tmp_path / "bad"),
                 "--train.eval_tasks=[arc_easyy]"]) == 2  # refused before any work
    assert "arc_easyy" in capsys.readouterr().err and not (tmp_path / "bad").exists()
