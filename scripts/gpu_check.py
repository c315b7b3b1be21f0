"""One-command GPU check: the xl (Xmodel-2 1.2B) shape trained for a few steps with FSDP2,
per-block torch.compile and bf16, printing tokens/s, MFU and peak memory.

    python scripts/gpu_check.py                                   # one GPU
    torchrun --standalone --nproc_per_node 8 scripts/gpu_check.py # every GPU of a node
    python scripts/gpu_check.py --cpu-smoke                       # tiny shape on CPU (tests)

Tokens are drawn at random from a Zipf distribution over the vocabulary (the check measures
speed, not language; the loss falls from about ln(vocab) towards that distribution's entropy,
which shows the steps really train). MFU uses the PaLM FLOP count of
xmodel2.train.flops against two peaks: the bf16 matmul rate measured here on 8192² matrices,
and the H100/H200 SXM datasheet dense bf16 peak (989 TFLOP/s) for reference. The last line of
output is the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

import torch

from xmodel2.model.config import ModelConfig, preset
from xmodel2.model.folder import build_model
from xmodel2.model.mup import build_optimizer
from xmodel2.train import distributed, flops
from xmodel2.train.hardware import measure_matmul_flops

H100_H200_BF16_DENSE_PEAK = 989e12  # FLOP/s, NVIDIA datasheet (SXM, without sparsity)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="a tiny model on CPU (gloo), to test this script without a GPU")
    parser.add_argument("--preset", default="xl")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4, help="sequences per GPU per step")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-activation-checkpointing", action="store_true")
    return parser.parse_args(argv)


def join_process_group(device_name: str) -> torch.device:
    """torchrun's group, or a one-rank group when started with plain `python`."""
    if not distributed.launched_by_torchrun():
        with socket.socket() as probe:  # a free local port for the one-rank rendezvous
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    return distributed.init_distributed(device_name)


def check(args: argparse.Namespace) -> dict:
    if args.cpu_smoke:
        device = join_process_group("cpu")
        config = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_layers=2,
                             num_heads=2, num_kv_heads=1, max_position_embeddings=64)
        seq_len, batch, dtype, compile_blocks = 64, 2, torch.float32, False
        peak = measure_matmul_flops(torch.float32, device, size=256)
        datasheet = None
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device; use --cpu-smoke on a CPU")
        device = join_process_group("cuda")
        config = preset(args.preset, vocab_size=65280, max_position_embeddings=args.seq_len)
        seq_len, batch, dtype, compile_blocks = args.seq_len, args.batch, torch.bfloat16, not args.no_compile
        peak = measure_matmul_flops(torch.bfloat16, device, size=8192)
        datasheet = H100_H200_BF16_DENSE_PEAK
    world = distributed.world_size()
    model = build_model(config, seed=0, device=device)
    loss_module = distributed.parallelize(
        model, "fsdp", device, activation_checkpointing=not args.no_activation_checkpointing,
        compile_blocks=compile_blocks, bf16_params=device.type == "cuda")
    optimizer = build_optimizer(model, config, lr=1e-3)
    generator = torch.Generator().manual_seed(1000 + distributed.rank())
    zipf = 1.0 / torch.arange(1, config.vocab_size + 1, dtype=torch.float64)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    losses, seconds = [], []
    for step in range(args.warmup + args.steps):
        block = torch.multinomial(zipf, batch * (seq_len + 1), replacement=True, generator=generator)
        block = block.view(batch, seq_len + 1).to(device)
        sync()
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_module(block[:, :-1], block[:, 1:])
        loss.backward()
        distributed.clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(distributed.all_reduce_mean(loss.item(), device))
        sync()
        if step >= args.warmup:
            seconds.append(time.perf_counter() - started)

    step_seconds = statistics.median(seconds)
    tokens_per_s = world * batch * seq_len / step_seconds
    flops_per_token = flops.training_flops_per_token(config, seq_len)
    result = {
        "shape": "cpu-smoke" if args.cpu_smoke else args.preset, "parameters": config.num_parameters(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "ranks": world, "strategy": "fsdp", "compile": compile_blocks,
        "activation_checkpointing": not args.no_activation_checkpointing,
        "precision": "bf16" if dtype == torch.bfloat16 else "fp32", "seq_len": seq_len,
        "batch_per_rank": batch, "steps_timed": len(seconds), "step_seconds_median": step_seconds,
        "tokens_per_s": tokens_per_s, "tokens_per_s_per_rank": tokens_per_s / world,
        "flops_per_token": flops_per_token, "measured_peak_flops_per_rank": peak,
        "mfu_measured_peak": flops.mfu(tokens_per_s / world, flops_per_token, peak),
        "mfu_datasheet_peak": flops.mfu(tokens_per_s / world, flops_per_token, datasheet) if datasheet else None,
        "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None),
        "peak_reserved_gib": (torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None),
        "loss_first": losses[0], "loss_last": losses[-1],
    }
    return result


def report(result: dict) -> None:
    lines = [
        f"gpu_check: {result['shape']} ({result['parameters']:,} parameters) on {result['ranks']} x "
        f"{result['device']}, FSDP2, compile {result['compile']}, {result['precision']}, "
        f"activation checkpointing {result['activation_checkpointing']}",
        f"  batch {result['batch_per_rank']} x {result['seq_len']} tokens per rank; median step "
        f"{result['step_seconds_median'] * 1e3:.1f} ms over {result['steps_timed']} steps",
        f"  tokens/s {result['tokens_per_s']:,.0f} ({result['tokens_per_s_per_rank']:,.0f} per rank)",
        f"  MFU {100 * result['mfu_measured_peak']:.1f}% of the measured matmul peak "
        f"({result['measured_peak_flops_per_rank'] / 1e12:.3g} TFLOP/s per rank)",
    ]
    if result["mfu_datasheet_peak"] is not None:
        lines.append(f"  MFU {100 * result['mfu_datasheet_peak']:.1f}% of the H100/H200 datasheet "
                     f"bf16 dense peak (989 TFLOP/s)")
    if result["peak_memory_gib"] is not None:
        lines.append(f"  peak memory {result['peak_memory_gib']:.1f} GiB allocated, "
                     f"{result['peak_reserved_gib']:.1f} GiB reserved (rank 0)")
    lines.append(f"  loss {result['loss_first']:.3f} -> {result['loss_last']:.3f}")
    print("\n".join(lines), file=sys.stderr)
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = check(args)
        if distributed.is_main_process():
            report(result)
    finally:
        distributed.shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
