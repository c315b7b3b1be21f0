"""`xmodel2 plan`: memory, time and cost of a GPU-cluster run, simulated on this CPU."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

HELP = """Plan a pretraining run on N GPUs before renting them: memory per GPU, time, GPU-hours.

The model, FSDP2 wrapping (per block), activation checkpointing and optimizer are the ones
`pretrain` builds; one training step runs under torch's FakeTensorMode with a fake process group
of N ranks and FSDPMemTracker, so nothing is allocated. It prints the peak memory per GPU by part
(parameters, gradients, optimizer state, activations, temporaries) with activation checkpointing
off and on, the largest micro-batch that fits in 90% of the GPU's memory with each, and the time
and GPU-hours of the config's tokens at an assumed MFU of the GPU's datasheet bf16 peak. The
config is checked for N ranks as pretrain checks it (batch split, context), with the same
errors. Config keys can be overridden as in pretrain (--train.batch_size=512 ...).

The two simulations run at once on two cores; the 1.2B (xl) model on 64 fake ranks takes about a
minute of one core each. The plan has not been compared with a run on a real GPU here (no GPU was at hand):
its figures are the simulated step's tensors, plus the 10% of memory left for the rest.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from xmodel2.planning.gpus import DEFAULT_MFU, GPUS

    parser.add_argument("config", help="run config YAML (as for pretrain)")
    parser.add_argument("--gpus", type=int, required=True, metavar="N", help="number of GPUs (FSDP2 ranks)")
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS), type=str.lower,
                        help="GPU type (datasheet bf16 peak and memory; default h100)")
    parser.add_argument("--micro-batch", type=int, default=None, metavar="B",
                        help="sequences per GPU per forward (default: train.micro_batch_size; "
                             "auto is settled for the GPU's memory as pretrain would)")
    parser.add_argument("--ac", choices=("on", "off"), default=None,
                        help="activation checkpointing of the run (default: parallel.activation_checkpointing)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                        help=f"assumed model FLOPs utilisation, a fraction (default {DEFAULT_MFU})")
    parser.add_argument("--price", type=float, default=None, metavar="PER_GPU_HOUR",
                        help="price of one GPU-hour: adds the run's cost")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from xmodel2.errors import UserError
    from xmodel2.planning.cost import check_mfu, run_time
    from xmodel2.planning.gpus import gpu as find_gpu
    from xmodel2.planning.memory import plan_memory
    from xmodel2.planning.report import Plan, plan_json, plan_text
    from xmodel2.planning.runshape import run_shape
    from xmodel2.train.runconfig import load_run_config

    check_mfu(args.mfu)
    if args.price is not None and args.price < 0:
        raise UserError(f"--price {args.price:g}: must not be negative")
    gpu = find_gpu(args.gpu)
    run_config = load_run_config(args.config, args.overrides)
    # Every listed GPU runs bf16 matmuls fast, so pretrain's `auto` is bf16 there; it is settled
    # before the micro-batch, as pretrain settles it.
    precision = "fp32" if run_config.train.precision == "fp32" else "bf16"
    run_config = replace(run_config, train=replace(run_config.train, precision=precision))
    shape = run_shape(run_config, args.gpus, args.micro_batch, gpu.memory)
    ac = run_config.parallel.activation_checkpointing if args.ac is None else args.ac == "on"
    started = time.perf_counter()
    memory = plan_memory(shape, gpu, precision)
    first_batch = shape.segments[0].global_batch * shape.seq_len
    timing = run_time(shape.config, shape.seq_len, shape.tokens, first_batch, args.gpus, gpu, args.mfu, args.price)
    plan = Plan(args.config, gpu, args.gpus, precision, ac, shape, memory, timing,
                simulation_seconds=time.perf_counter() - started)
    print(json.dumps(plan_json(plan), indent=2) if args.json else plan_text(plan))
    return 0
