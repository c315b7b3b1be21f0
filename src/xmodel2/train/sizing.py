"""How a run's batches are sized: the batch schedule, the micro-batch that `auto` means, the
split of every global batch over ranks and micro-batches, and the memory one micro-batch step
needs. Pure functions of the run config (and the device's free memory), checked before any work.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from xmodel2.data.plan import micro_batches_per_rank
from xmodel2.errors import UserError
from xmodel2.model.config import ModelConfig
from xmodel2.train import distributed
from xmodel2.train.hardware import available_memory, training_step_bytes
from xmodel2.train.runconfig import RunConfig, model_config
from xmodel2.train.schedule import BatchSchedule, largest_micro_batch

# A micro-batch chosen for the user fills at most this share of the free memory: the estimate is a
# lower bound, and allocator slack, temporaries and other processes need the rest.
AUTO_MEMORY_SHARE = 0.5


def batch_schedule(run: RunConfig) -> BatchSchedule:
    if run.train.batch_schedule:
        return BatchSchedule(tuple((int(s), int(b)) for s, b in run.train.batch_schedule))
    return BatchSchedule.constant(run.train.batch_size)


def expected_vocab_size(run: RunConfig, out_dir: Path | None) -> int:
    """The vocabulary the model will get: the given or already trained tokenizer's, else the
    configured size of the one to train (which may come out smaller, never larger)."""
    from xmodel2.tokenizer import load_tokenizer

    if run.tokenizer.path:
        return load_tokenizer(run.resolve_path(run.tokenizer.path)).vocab_size
    if out_dir is not None and (out_dir / "tokenizer" / "tokenizer.model").is_file():
        return load_tokenizer(out_dir / "tokenizer").vocab_size
    return run.tokenizer.vocab_size


def settle_micro_batch(run: RunConfig, device: torch.device, world: int = 1,
                       out_dir: Path | None = None) -> RunConfig:
    """`run` with `train.micro_batch_size: auto` settled for `world` ranks on `device` (an explicit
    size is kept); the split of the global batch is checked either way. `out_dir` is the run
    folder, whose trained tokenizer (if any) gives the vocabulary the memory estimate counts."""
    return settled_micro_batch(run, model_config(run, expected_vocab_size(run, out_dir)), device, world)


def settled_micro_batch(run: RunConfig, config: ModelConfig, device: torch.device, world: int) -> RunConfig:
    if run.train.micro_batch_size == "auto":
        size = auto_micro_batch(run, config, world, available_memory(device))
        # Ranks may see different free memory; all must split the batch alike, so rank 0 decides.
        size = int(distributed.all_reduce_sum(size if distributed.rank() == 0 else 0, device))
        run = replace(run, train=replace(run.train, micro_batch_size=size))
    check_split(run, world)
    return run


def auto_micro_batch(run: RunConfig, config: ModelConfig, world: int, available: int | None) -> int:
    """The micro-batch that `auto` means: the largest divisor of every per-rank batch (the global
    batch, or each size of the batch schedule, over `world` ranks) whose estimated step memory
    fits in AUTO_MEMORY_SHARE of `available` bytes (any size fits when that is unknown). Fewer,
    larger micro-batches per step run the same sequences with less per-call overhead."""
    sizes = [size for _, size in batch_schedule(run).segments]
    for size in sizes:
        if size % world:
            raise UserError(f"train.batch_size: a global batch of {size} sequences does not split "
                            f"evenly over {world} ranks")

    def fits(micro: int) -> bool:
        if available is None:
            return True
        return sum(step_bytes(run, config, micro, world).values()) <= AUTO_MEMORY_SHARE * available

    return largest_micro_batch([size // world for size in sizes], fits)


def check_split(run: RunConfig, world: int) -> None:
    micro = run.train.micro_batch_size
    for _, size in batch_schedule(run).segments:
        try:
            micro_batches_per_rank(size, micro, world)
        except ValueError:
            raise UserError(f"train.batch_size: a global batch of {size} sequences does not split into "
                            f"micro-batches of {micro} (train.micro_batch_size) on {world} rank(s); "
                            "give a divisor of the batch per rank, or auto") from None


def step_bytes(run: RunConfig, config: ModelConfig, micro: int, world: int) -> dict[str, int]:
    shards = world if run.parallel.strategy == "fsdp" else 1
    return training_step_bytes(config, micro, run.data.seq_len, run.train.precision,
                               run.parallel.activation_checkpointing, shards)


def check_memory(run: RunConfig, config: ModelConfig, device: torch.device, world: int) -> None:
    parts = step_bytes(run, config, run.train.micro_batch_size, world)
    needed, available = sum(parts.values()), available_memory(device)
    if available is None or needed <= available:
        return
    detail = ", ".join(f"{name} {_gib(size)}" for name, size in parts.items())
    raise UserError(f"train.micro_batch_size={run.train.micro_batch_size}: one micro-batch step needs "
                    f"at least {_gib(needed)} ({detail}) but {device} has {_gib(available)} available; "
                    "lower train.micro_batch_size (the global batch is reached by accumulation) "
                    "or data.seq_len")


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB"
