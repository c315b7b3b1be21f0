"""A run config checked for a world size, as `pretrain` would check it, before any GPU is rented.

The model section, the context, and the split of every global batch of the batch schedule into
ranks and micro-batches go through pretrain's own functions (`model_config`, train/sizing.py),
so a plan refuses exactly what the run would refuse, with the same one-line errors. On top: the token budget of every stage and source, and the size
of a checkpoint on disk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from xmodel2.data.plan import micro_batches_per_rank
from xmodel2.errors import UserError
from xmodel2.model.config import ModelConfig
from xmodel2.train.runconfig import RunConfig, model_config
from xmodel2.train.sizing import auto_micro_batch, batch_schedule, check_split, expected_vocab_size

# Bytes a parameter takes in a checkpoint: fp32 weights in the model folder, and AdamW's two fp32
# moments in the optimizer shards (the per-tensor step counters are a few bytes more).
CHECKPOINT_BYTES_PER_PARAMETER = 4 + 8


@dataclass(frozen=True)
class BatchSegment:
    from_step: int
    global_batch: int  # sequences
    per_rank: int
    accumulation: int  # micro-batches per rank per step


@dataclass(frozen=True)
class StageBudget:
    name: str
    steps: int
    tokens: int
    sources: dict[str, int]  # tokens each source of the mixture gives


@dataclass(frozen=True)
class RunShape:
    config: ModelConfig
    world_size: int
    micro_batch: int
    micro_batch_from: str  # where the micro-batch came from, for the report
    seq_len: int
    steps: int
    segments: list[BatchSegment]
    stages: list[StageBudget]
    tokens: int  # trained on over the whole run
    checkpoint_bytes: int
    checkpoints_kept: int

    def to_dict(self) -> dict:
        data = asdict(self)
        data["config"] = self.config.to_dict()
        return data


def run_shape(run: RunConfig, world_size: int, micro_batch: int | None = None,
              gpu_memory: int | None = None) -> RunShape:
    """Check `run` for `world_size` ranks (FSDP2) and lay out its batches, stages and checkpoints.

    `micro_batch` (--micro-batch) overrides train.micro_batch_size; `auto` is settled as pretrain
    settles it on a GPU with `gpu_memory` bytes free.
    """
    if world_size < 1:
        raise UserError(f"--gpus {world_size}: need at least one GPU")
    if run.parallel.strategy != "fsdp":
        raise UserError(f"parallel.strategy={run.parallel.strategy}: xmodel2 plan simulates FSDP2 runs "
                        "only; plan with --parallel.strategy=fsdp")
    config = model_config(run, expected_vocab_size(run, None))
    if run.data.seq_len > config.max_position_embeddings:
        raise UserError(f"data.seq_len={run.data.seq_len} exceeds the model's context "
                        f"(model.max_position_embeddings={config.max_position_embeddings})")
    source = "--micro-batch" if micro_batch is not None else "train.micro_batch_size"
    if micro_batch is None and run.train.micro_batch_size == "auto":
        micro_batch = auto_micro_batch(run, config, world_size, gpu_memory)
        source = "train.micro_batch_size: auto"
    elif micro_batch is None:
        micro_batch = int(run.train.micro_batch_size)
    if micro_batch < 1:
        raise UserError(f"--micro-batch {micro_batch}: must be at least 1")
    run = replace(run, train=replace(run.train, micro_batch_size=micro_batch))
    check_split(run, world_size)
    batches = batch_schedule(run)
    segments = [BatchSegment(start, size, size // world_size, micro_batches_per_rank(size, micro_batch, world_size))
                for start, size in batches.segments if start < run.train.steps]
    every = run.checkpoint.every
    written = run.train.steps // every
    return RunShape(
        config=config, world_size=world_size, micro_batch=micro_batch, micro_batch_from=source,
        seq_len=run.data.seq_len, steps=run.train.steps, segments=segments,
        stages=_stage_budgets(run, batches), tokens=batches.offset(run.train.steps) * run.data.seq_len,
        checkpoint_bytes=CHECKPOINT_BYTES_PER_PARAMETER * config.num_parameters(),
        checkpoints_kept=written if run.checkpoint.keep == 0 else min(written, run.checkpoint.keep))


def _stage_budgets(run: RunConfig, batches) -> list[StageBudget]:
    """Tokens of each stage and of each source in its mixture: an amount above 1 is tokens, one
    up to 1 a share of the stage (at least one sequence when positive, as the run rounds it)."""
    budgets, start = [], 0
    for stage, steps in zip(run.stages, run.stage_steps()):
        tokens = (batches.offset(start + steps) - batches.offset(start)) * run.data.seq_len
        sources = {}
        for name, amount in stage.mixture.items():
            if amount > 1:
                sources[name] = int(amount)
            elif amount > 0:
                sources[name] = max(int(round(amount * tokens)), run.data.seq_len)
        budgets.append(StageBudget(stage.name, steps, tokens, sources))
        start += steps
    return budgets
