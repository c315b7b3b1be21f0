"""`xmodel2 plan`: the simulated step against real FSDP2 steps on two gloo ranks, the sharded state
against the arithmetic, the config checks for a world size, and time and GPU-hours against the
Xmodel-2 report's compute figure."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from xmodel2.cli import main
from xmodel2.model.config import ModelConfig
from xmodel2.planning.cost import implied_mfu, run_time
from xmodel2.planning.gpus import gpu
from xmodel2.planning.runshape import run_shape
from xmodel2.planning.simulate import StepMemory, StepShape, simulate_steps, track_step
from xmodel2.train.runconfig import load_run_config

SMALL = ModelConfig(vocab_size=1024, hidden_size=128, intermediate_size=320, num_layers=2, num_heads=4,
                    num_kv_heads=2, max_position_embeddings=256)
SEQ, MICRO, RANKS = 128, 4, 2


def sharded_state_bytes(config: ModelConfig, ranks: int) -> tuple[int, int, int]:
    """fp32 parameter and gradient shards, and AdamW's two fp32 moments plus one fp32 step counter
    per parameter tensor, when every sharded dimension divides by the ranks (no padding)."""
    tensors = config.num_layers * 9 + 2  # 7 matrices and 2 norms a block; embedding, final norm
    params = config.num_parameters()
    return 4 * params // ranks, 4 * params // ranks, 8 * params // ranks + 4 * tensors


def _real_rank(rank: int, port: int, activation_checkpointing: bool, out: str) -> None:
    """One rank of a real two-rank FSDP2 run: pretrain's model, wrapping and optimizer, the
    trainer's step; the second step measured by the tracker in real mode."""
    import torch.distributed as dist

    from xmodel2.data.plan import MicroBatch
    from xmodel2.model.folder import build_model
    from xmodel2.model.mup import build_optimizer
    from xmodel2.train.distributed import clip_grad_norm, parallelize
    from xmodel2.train.trainer import accumulate_gradients

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=RANKS)
    try:
        device = torch.device("cpu")
        model = build_model(SMALL, seed=0).to(device)
        wrapped = parallelize(model, "fsdp", device, activation_checkpointing=activation_checkpointing)
        optimizer = build_optimizer(model, SMALL, lr=1e-3)
        generator = torch.Generator().manual_seed(rank)

        def step(batch: MicroBatch) -> None:
            accumulate_gradients(wrapped, [batch], RANKS, "fp32", device)
            clip_grad_norm(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def micro_batch() -> MicroBatch:
            tokens = torch.randint(0, SMALL.vocab_size, (MICRO, SEQ + 1), generator=generator)
            return MicroBatch(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())

        step(micro_batch())  # the first step makes AdamW's moments
        batch = micro_batch()
        measured = track_step(wrapped, optimizer, (batch.inputs, batch.targets), lambda: step(batch))
        if rank == 0:
            Path(out).write_text(json.dumps(measured.to_dict()))
    finally:
        dist.destroy_process_group()


def real_step(activation_checkpointing: bool, tmp_path: Path) -> StepMemory:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / f"real-{activation_checkpointing}.json"
    mp.spawn(_real_rank, args=(port, activation_checkpointing, str(out)), nprocs=RANKS, join=True)
    return StepMemory(**json.loads(out.read_text()))


def test_simulated_step_matches_real_fsdp2_steps_on_two_gloo_ranks(tmp_path):
    settings = (False, True)
    simulated = simulate_steps([StepShape(SMALL, RANKS, MICRO, SEQ, activation_checkpointing=ac,
                                          precision="fp32", gpu_kernels=False) for ac in settings])
    expected = sharded_state_bytes(SMALL, RANKS)
    peaks = {}
    for ac, plan in zip(settings, simulated):
        real = real_step(ac, tmp_path)
        peaks[ac] = (plan.peak, real.peak)
        assert abs(plan.peak - real.peak) <= 0.2 * real.peak, (ac, plan.to_dict(), real.to_dict())
        for measured in (plan, real):
            assert (measured.sharded_parameters, measured.sharded_gradients,
                    measured.optimizer_state) == expected
    # Checkpointing must show: the blocks' activations are not kept through the forward pass.
    assert peaks[True][1] < peaks[False][1] and peaks[True][0] < peaks[False][0]


def write_config(path: Path, model: str, batch: int = 32, strategy: str = "fsdp", seq_len: int = 256,
                 steps: int = 1000, vocab: int = 4096, micro: str = "2") -> Path:
    path.write_text(f"""
model: {model}
tokenizer: {{vocab_size: {vocab}}}
data:
  seq_len: {seq_len}
  sources:
    web: {{inputs: [web.jsonl]}}
    code: {{inputs: [code.jsonl]}}
train: {{steps: {steps}, batch_size: {batch}, micro_batch_size: {micro}, warmup_steps: 10}}
stages:
  - {{name: stable, mixture: {{web: 0.8, code: 0.2}}}}
  - {{name: decay, steps: 0.1, decay: {{halvings: 5}}, mixture: {{web: 0.6, code: 0.4}}}}
parallel: {{strategy: {strategy}}}
checkpoint: {{every: 100, keep: 3}}
""")
    return path


TINY = "{preset: nano, num_layers: 2, max_position_embeddings: 256}"


def test_plan_prints_memory_largest_micro_batch_time_and_json(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", TINY)
    assert main(["plan", str(config), "--gpus", "2", "--gpu", "A100", "--price", "2"]) == 0
    text = capsys.readouterr().out
    for expected in ("2 x A100 SXM 80GB", "optimizer state", "peak", "largest micro-batch", "GPU-hours",
                     "from step 0: 32 sequences", "16 per GPU = 8 micro-batch(es) of 2", "cost"):
        assert expected in text, expected
    assert main(["plan", str(config), "--gpus", "8", "--ac", "on", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["activation_checkpointing"] is True and plan["gpu"]["name"] == "h100"
    by_ac = plan["memory"]["by_activation_checkpointing"]
    params, grads, optimizer = sharded_state_bytes(ModelConfig.from_dict(plan["run"]["config"]), 8)
    for step in by_ac.values():
        assert (step["sharded_parameters"], step["sharded_gradients"], step["optimizer_state"]) == (
            params, grads, optimizer)
        assert step["fits"] and step["largest_micro_batch"] == 4  # any divisor of 4 per GPU fits 80 GB
    assert plan["memory"]["peak_bytes"] == by_ac["on"]["peak"]
    assert plan["run"]["tokens"] == 1000 * 32 * 256
    assert plan["time"]["gpu_hours"] == pytest.approx(
        plan["run"]["tokens"] * plan["time"]["flops_per_token"] / (8 * 989.5e12 * 0.4) * 8 / 3600)


def test_a_micro_batch_too_large_for_the_gpu_fits_only_with_activation_checkpointing(tmp_path, capsys):
    # 32 sequences of 2,048 tokens through 8 blocks 2,048 wide: their activations (about 4 GiB a
    # block) outgrow an L4's 24 GB; kept only at block inputs, they fit.
    model = ("{hidden_size: 2048, intermediate_size: 5632, num_layers: 8, num_heads: 16, num_kv_heads: 4, "
             "max_position_embeddings: 2048}")
    config = write_config(tmp_path / "wide.yaml", model, batch=32, seq_len=2048, micro="32")
    assert main(["plan", str(config), "--gpus", "1", "--gpu", "l4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    off, on = (plan["memory"]["by_activation_checkpointing"][ac] for ac in ("off", "on"))
    assert plan["memory"]["fits"] is False and not off["fits"] and on["fits"]
    assert off["peak"] > plan["memory"]["usable_bytes"] >= on["peak"]
    assert 32 % off["largest_micro_batch"] == 0 and off["largest_micro_batch"] < 32
    assert on["largest_micro_batch"] == 32


@pytest.mark.parametrize("extra, message", [
    (["--gpus", "3"], "train.batch_size: a global batch of 32 sequences does not split into micro-batches of 2"),
    (["--gpus", "3", "--train.micro_batch_size=auto"],
     "train.batch_size: a global batch of 32 sequences does not split evenly over 3 ranks"),
    (["--gpus", "8", "--micro-batch", "3"], "does not split into micro-batches of 3 (train.micro_batch_size) on 8"),
    (["--gpus", "8", "--parallel.strategy=ddp"], "parallel.strategy=ddp: xmodel2 plan simulates FSDP2"),
    (["--gpus", "8", "--mfu", "0"], "--mfu 0: must be a fraction in (0, 1]"),
    (["--gpus", "8", "--data.seq_len=512"], "data.seq_len=512 exceeds the model's context"),
    (["--gpus", "0"], "--gpus 0: need at least one GPU"),
])
def test_bad_plans_are_one_line_errors(tmp_path, capsys, extra, message):
    config = write_config(tmp_path / "tiny.yaml", TINY)
    assert main(["plan", str(config), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_unknown_gpu_is_refused(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", TINY)
    with pytest.raises(SystemExit) as exit:
        main(["plan", str(config), "--gpus", "8", "--gpu", "tpu"])
    assert exit.value.code == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


REPORT_GPU_HOURS = 15.2e3  # Xmodel-2 report: the 1.2B model's full training on H800s


def test_time_for_the_1p2b_recipe_agrees_with_the_report_within_a_factor_of_two(tmp_path):
    # The 1.2B (xl) shape with 4,096-token sequences and a 4M-token batch for 1.5T tokens.
    config = write_config(tmp_path / "xl.yaml", "{preset: xl, max_position_embeddings: 4096}", batch=1024,
                          seq_len=4096, steps=357628, vocab=65280, micro="1")
    shape = run_shape(load_run_config(config, []), 64)
    assert shape.tokens == pytest.approx(1.5e12, rel=1e-3)
    h800 = gpu("h800")
    estimate = run_time(shape.config, shape.seq_len, shape.tokens, 1024 * 4096, 64, h800)
    assert REPORT_GPU_HOURS / 2 <= estimate.gpu_hours <= 2 * REPORT_GPU_HOURS
    # The MFU at which the project's FLOP count gives the report's figure: about 31%.
    mfu = implied_mfu(shape.config, shape.seq_len, shape.tokens, h800, REPORT_GPU_HOURS)
    assert mfu == pytest.approx(0.31, abs=0.01)
    assert run_time(shape.config, shape.seq_len, shape.tokens, 1, 64, h800, mfu).gpu_hours == pytest.approx(
        REPORT_GPU_HOURS)
    # 16 sequences per GPU split as 16 micro-batches of 1; 12 bytes a parameter per checkpoint.
    assert [(s.per_rank, s.accumulation) for s in shape.segments] == [(16, 16)]
    assert shape.checkpoint_bytes == 12 * shape.config.num_parameters()
