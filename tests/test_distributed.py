"""Two gloo ranks on CPU, launched by torchrun exactly as a user would: DDP and FSDP2 reproduce the
single-process loss curve for the same global batch, checkpoints move between world sizes, and
what one rank must do alone (logging, the model folder) happens once."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from run_fixtures import fresh_out, pretrain, slice_jsonl
from xmodel2.cli import main
from xmodel2.errors import UserError
from xmodel2.train.checkpoint import latest_checkpoint, list_checkpoints

STEPS = 8
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    for part, limit in (("wiki-train", 300), ("math", 80), ("wiki-validation", 30)):
        slice_jsonl(part, root / f"{part}.jsonl", limit)
    config = root / "tiny.yaml"
    # Global batch 8 in micro-batches of 2: one process accumulates 4, each of 2 ranks 2, so the
    # deferred gradient sync is exercised. grad_clip 0.3 sits below every step's gradient norm,
    # so clipping by the full (sharded) norm matters on every step.
    config.write_text(textwrap.dedent(f"""\
        model: {{hidden_size: 64, intermediate_size: 160, num_layers: 2, num_heads: 2,
                num_kv_heads: 1, max_position_embeddings: 64, mup: {{dim_model_base: 32}}}}
        tokenizer: {{vocab_size: 700, max_sentences: 20000}}
        data:
          seq_len: 32
          workers: 1
          validation: wiki-validation
          validation_sequences: 8
          sources:
            wiki: {{inputs: [wiki-train.jsonl]}}
            math: {{inputs: [math.jsonl]}}
            wiki-validation: {{inputs: [wiki-validation.jsonl], held_out: true}}
        train: {{steps: {STEPS}, lr: 0.01, warmup_steps: 2, batch_size: 8, micro_batch_size: 2,
                grad_clip: 0.3, precision: fp32, log_every: 1, val_every: 4, seed: 0}}
        stages:
          - {{name: stable, mixture: {{wiki: 0.8, math: 0.2}}}}
          - {{name: decay, steps: 2, decay: {{shape: exponential, half_life: 3}},
              mixture: {{wiki: 0.5, math: 0.5}}}}
        checkpoint: {{every: 4, keep: 0}}
        """))
    warm = root / "warm"  # tokenizer and shards, prepared once and copied into each run
    assert main(["pretrain", str(config), "--out", str(warm), "--train.steps=3", "--stages.1.steps=1",
                 "--no-progress", "--no-finish"]) == 0
    return config


def torchrun(config: Path, out: Path, *extra: str, ranks: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(ranks), "-m", "xmodel2", "pretrain", str(config), "--out", str(out),
               "--no-progress", "--no-finish", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.fixture(scope="module")
def reference(config_path, tmp_path_factory) -> Path:
    out = fresh_out(config_path, tmp_path_factory.mktemp("reference"), "single")
    assert pretrain(config_path, out) == 0
    return out


@pytest.fixture(scope="module")
def two_ranks(config_path, tmp_path_factory):
    """Runs on two ranks, launched once per strategy and shared by the tests that read them."""
    runs: dict[str, Path] = {}

    def run(strategy: str) -> Path:
        if strategy not in runs:
            out = fresh_out(config_path, tmp_path_factory.mktemp(strategy), strategy)
            extra = [f"--parallel.strategy={strategy}"]
            if strategy == "fsdp":
                extra.append("--parallel.activation_checkpointing=true")
            proc = torchrun(config_path, out, *extra)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert "2 ranks" in proc.stderr
            runs[strategy] = out
        return runs[strategy]

    return run


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_reproduce_single_process_loss_curve(strategy, reference, two_ranks):
    out = two_ranks(strategy)
    expected, got = metrics(reference), metrics(out)
    # Rank 0 alone writes metrics: one line per logged step, no duplicates from rank 1.
    assert [r["step"] for r in got] == [r["step"] for r in expected] == list(range(STEPS + 1))
    for want, have in zip(expected, got):
        assert have["loss"] == pytest.approx(want["loss"], rel=1e-5), want["step"]
        assert have["tokens"] == want["tokens"]
        if "val_loss" in want:
            assert have["val_loss"] == pytest.approx(want["val_loss"], rel=1e-5)
        if "grad_norm" in want:
            assert want["grad_norm"] > 0.3  # clipping was active
            assert have["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
    assert max_difference(weights(latest_checkpoint(reference)), weights(latest_checkpoint(out))) < 1e-5


def test_distributed_checkpoint_is_a_complete_model_folder(two_ranks, tmp_path):
    folder = latest_checkpoint(two_ranks("fsdp"))
    assert [p.name for p in list_checkpoints(folder.parents[1])] == ["step-00000004", "step-00000008"]
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.model",
                 "trainer_state.json", "rng.pt", "optimizer/.metadata", "optimizer/__0_0.distcp",
                 "optimizer/__1_0.distcp"):
        assert (folder / name).is_file(), name
    assert not (folder / "optimizer.pt").exists()
    assert not list(folder.parent.glob(".*.tmp"))
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["step"] == STEPS and state["world_size"] == 2
    # Full, unsharded tensors: the folder loads as a plain model and generates.
    assert main(["generate", str(folder), "--prompt", "The", "--max-new-tokens", "4"]) == 0


def test_two_rank_checkpoint_resumes_on_one_process(config_path, reference, two_ranks, tmp_path):
    uninterrupted = two_ranks("fsdp")
    out = fresh_out(config_path, tmp_path, "resumed", like=uninterrupted)
    shutil.rmtree(out / "checkpoints" / f"step-{STEPS:08d}")
    assert pretrain(config_path, out) == 0  # no torchrun: one process reads both ranks' optimizer shards
    final = weights(latest_checkpoint(out))
    assert max_difference(final, weights(latest_checkpoint(uninterrupted))) < 1e-6
    assert max_difference(final, weights(latest_checkpoint(reference))) < 1e-5
    resumed = {r["step"]: r["loss"] for r in metrics(out)}
    for record in metrics(reference):
        assert resumed[record["step"]] == pytest.approx(record["loss"], rel=1e-5)


def test_one_process_checkpoint_resumes_on_two_ranks(config_path, reference, tmp_path):
    out = fresh_out(config_path, tmp_path, "widened", like=reference)
    shutil.rmtree(out / "checkpoints" / f"step-{STEPS:08d}")
    proc = torchrun(config_path, out, "--parallel.strategy=fsdp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and "step 4" in proc.stderr
    assert max_difference(weights(latest_checkpoint(out)), weights(latest_checkpoint(reference))) < 1e-5


def test_resume_tolerances_detect_a_lost_optimizer_state(config_path, reference, tmp_path):
    """The control for the resume tests: the step-4 weights with a fresh AdamW state end far
    outside their tolerances, and a checkpoint without optimizer state is refused."""
    from xmodel2.model.folder import load_model_folder
    from xmodel2.model.mup import build_optimizer
    from xmodel2.train.dist_checkpoint import restore_optimizer

    out = fresh_out(config_path, tmp_path, "fresh-state", like=reference)
    shutil.rmtree(out / "checkpoints" / f"step-{STEPS:08d}")
    step4 = out / "checkpoints" / "step-00000004"
    model = load_model_folder(step4)
    fresh = build_optimizer(model, model.config, lr=0.01, weight_decay=0.1)
    torch.save(fresh.state_dict(), step4 / "optimizer.pt")
    assert pretrain(config_path, out) == 0
    assert max_difference(weights(latest_checkpoint(out)), weights(latest_checkpoint(reference))) > 1e-4
    (step4 / "optimizer.pt").unlink()
    with pytest.raises(UserError, match="no optimizer state"):
        restore_optimizer(step4, model, fresh)


def test_batch_that_does_not_split_across_ranks_is_one_line_error(config_path, tmp_path):
    out = fresh_out(config_path, tmp_path, "bad-split")
    proc = torchrun(config_path, out, "--train.batch_size=6")
    assert proc.returncode != 0
    errors = [l for l in proc.stderr.splitlines() if l.startswith("xmodel2: error:")]
    assert errors and "train.batch_size" in errors[0] and "2 rank(s)" in errors[0]
    assert not list(out.glob("checkpoints/*"))


def test_micro_batch_left_unset_follows_the_ranks(config_path, reference, tmp_path):
    # The same run without micro_batch_size: auto splits the global batch of 8 into one
    # micro-batch of 4 per rank, and the loss follows one process accumulating 4 of 2.
    unset = config_path.parent / "tiny-auto-micro.yaml"
    text = config_path.read_text()
    assert "micro_batch_size: 2," in text
    unset.write_text(text.replace("micro_batch_size: 2,", ""))
    out = fresh_out(config_path, tmp_path, "auto-micro")
    proc = torchrun(unset, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "run_config.json").read_text())["train"]["micro_batch_size"] == 4
    expected, got = metrics(reference), metrics(out)
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for want, have in zip(expected, got):
        assert have["loss"] == pytest.approx(want["loss"], rel=1e-5), want["step"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoint_metadata_that_would_run_code_is_refused(two_ranks, tmp_path, monkeypatch):
    from xmodel2.model.folder import load_model_folder
    from xmodel2.model.mup import build_optimizer
    from xmodel2.train.dist_checkpoint import restore_optimizer

    folder = tmp_path / "evil"
    shutil.copytree(latest_checkpoint(two_ranks("ddp")), folder)
    (folder / "optimizer" / ".metadata").write_bytes(pickle.dumps(_RunsCode()))
    monkeypatch.chdir(tmp_path)
    model = load_model_folder(folder)
    optimizer = build_optimizer(model, model.config, lr=0.01)
    with pytest.raises(UserError, match="refusing to load"):
        restore_optimizer(folder, model, optimizer)
    assert not (tmp_path / "pwned").exists()


def test_gpu_check_cpu_smoke():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--cpu-smoke"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["strategy"] == "fsdp" and result["steps_timed"] >= 2
    assert result["tokens_per_s"] > 0 and 0 < result["mfu_measured_peak"] < 1
    assert result["loss_last"] < result["loss_first"]  # it really trains


@pytest.mark.slow
def test_compiled_blocks_under_fsdp_follow_the_same_curve(config_path, reference, tmp_path):
    out = fresh_out(config_path, tmp_path, "compiled")
    proc = torchrun(config_path, out, "--parallel.strategy=fsdp", "--parallel.activation_checkpointing=true",
                    "--train.compile=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for want, have in zip(metrics(reference), metrics(out), strict=True):
        assert have["loss"] == pytest.approx(want["loss"], rel=1e-4), want["step"]
