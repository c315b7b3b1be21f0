"""`xmodel2 pretrain --dry-run`: a run config checked and laid out for N ranks, nothing trained.

The stage, token and batch arithmetic is `run_shape`'s (which is pretrain's own, train/sizing.py),
and the learning rate is the engine's WSD schedule, so the plan shows what the run would do.
Problems a user fixes outside the config (an input path that does not exist yet, shards too
small for a stage's budget) are collected rather than raised, so that a recipe whose paths are
still placeholders prints its whole plan along with the list of what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from xmodel2.data.shards import META_FILE, ShardReader
from xmodel2.errors import UserError
from xmodel2.eval.runner import check_task_names
from xmodel2.planning.report import short_count
from xmodel2.planning.runshape import RunShape, run_shape
from xmodel2.train.callbacks import due
from xmodel2.train.engine import lr_schedule
from xmodel2.train.runconfig import RunConfig


@dataclass(frozen=True)
class StagePlan:
    name: str
    first_step: int
    steps: int
    tokens: int
    sources: dict[str, int]  # tokens each source gives in this stage
    lr_first: float  # the base LR (train.lr times the schedule) at the stage's first step
    lr_last: float  # ... and at its last step


@dataclass(frozen=True)
class DryRunPlan:
    shape: RunShape
    stages: list[StagePlan]
    warmup_steps: int
    peak_lr: float
    checkpoint_steps: list[int]  # steps after which a checkpoint is written
    checkpoints_kept: int
    budget_notes: list[str]  # how each source's budget stands against its prepared shards
    unchecked: list[str]  # sources with no shards in OUT/data yet
    problems: list[str]  # one line each; any of them makes `--dry-run` exit 2


def dry_run_plan(run: RunConfig, out_dir: Path, nproc: int) -> DryRunPlan:
    """Check `run` for `nproc` ranks writing to `out_dir` and lay out its stages.

    Raises UserError for what is wrong in the config itself (a batch that does not split, a bad
    model section); lists missing inputs and unserveable budgets in `problems`.
    """
    if nproc < 1:
        raise UserError(f"--nproc {nproc}: need at least one rank")
    if nproc > 1 and run.parallel.strategy == "none":
        raise UserError(f"parallel.strategy=none cannot train on {nproc} ranks; use ddp or fsdp")
    if run.train.eval_tasks:
        check_task_names(run.train.eval_tasks)
    problems = missing_paths(run)
    planned = run
    if run.tokenizer.path and not run.resolve_path(run.tokenizer.path).exists():
        planned = replace(run, tokenizer=replace(run.tokenizer, path=None))  # plan on vocab_size
    # run_shape lays out FSDP2 runs; with no GPU memory given, the split, stages and checkpoints
    # it computes are the same for every strategy.
    shape = run_shape(replace(planned, parallel=replace(planned.parallel, strategy="fsdp")), nproc)
    schedule = lr_schedule(run)
    stages, start = [], 0
    for budget in shape.stages:
        last = start + budget.steps - 1
        stages.append(StagePlan(budget.name, start, budget.steps, budget.tokens, budget.sources,
                                run.train.lr * schedule.factor(start), run.train.lr * schedule.factor(last)))
        start += budget.steps
    notes, unchecked, short = shard_budgets(run, out_dir, stages)
    total = run.train.steps
    return DryRunPlan(
        shape=shape, stages=stages, warmup_steps=schedule.warmup_steps, peak_lr=run.train.lr,
        checkpoint_steps=[s for s in range(1, total + 1) if due(s, run.checkpoint.every, total)],
        checkpoints_kept=shape.checkpoints_kept, budget_notes=notes, unchecked=unchecked,
        problems=problems + short)


def missing_paths(run: RunConfig) -> list[str]:
    """One line per configured path that does not exist, naming its config key."""
    lines = []
    if run.tokenizer.path and not run.resolve_path(run.tokenizer.path).exists():
        lines.append(f"tokenizer.path: {run.resolve_path(run.tokenizer.path)} not found")
    for name, source in run.data.sources.items():
        for index, given in enumerate(source.inputs):
            path = run.resolve_path(given)
            if not path.exists():
                lines.append(f"data.sources.{name}.inputs.{index}: {path} not found")
    return lines


def shard_budgets(run: RunConfig, out_dir: Path,
                  stages: list[StagePlan]) -> tuple[list[str], list[str], list[str]]:
    """Each training source's budget against its prepared shard in OUT/data, when there is one:
    (notes, sources without shards, problems). A stage may repeat a shard up to its max_repeats,
    as the run allows."""
    notes, unchecked, problems = [], [], []
    repeats = {stage.name: stage.max_repeats for stage in run.stages}
    for name in sorted({source for stage in stages for source in stage.sources}):
        shard = out_dir / "data" / name
        if not (shard / META_FILE).is_file():
            unchecked.append(name)
            continue
        available = ShardReader(shard).num_tokens
        worst = max((stage.sources[name] / available, stage.name, stage.sources[name])
                    for stage in stages if name in stage.sources)
        times, stage_name, tokens = worst
        if times > repeats[stage_name]:
            problems.append(f"stages.{stage_name}.mixture.{name}: {tokens:,} tokens would repeat {shard} "
                            f"({available:,} tokens) {times:.2f} times, more than "
                            f"max_repeats={repeats[stage_name]:g}")
        else:
            notes.append(f"{name}: {available:,} tokens in {shard}; at most {times:.2f} passes "
                         f"(stage {stage_name})")
    return notes, unchecked, problems


def plan_text(plan: DryRunPlan, config_name: str) -> str:
    shape = plan.shape
    lines = [f"plan: {config_name} on {shape.world_size} rank(s), nothing trained",
             f"model: {short_count(shape.config.num_parameters(), ',.4g')} parameters, {shape.seq_len:,}-token sequences, "
             f"micro-batch {shape.micro_batch} ({shape.micro_batch_from})",
             "batch ramp:"]
    for segment in shape.segments:
        lines.append(f"  from step {segment.from_step:>9,}: {segment.global_batch:,} sequences "
                     f"({short_count(segment.global_batch * shape.seq_len, ',.4g')} tokens) a step = {segment.per_rank} per rank "
                     f"in {segment.accumulation} micro-batch(es)")
    lines.append(f"learning rate: peak {plan.peak_lr:g} after {plan.warmup_steps:,} warmup steps "
                 "(the base LR; μP gives hidden matrices lr / width multiplier)")
    lines.append("stages:")
    for stage in plan.stages:
        end = stage.first_step + stage.steps - 1
        lines.append(f"  {stage.name:<10} steps {stage.first_step:,}-{end:,} ({stage.steps:,} steps), "
                     f"{short_count(stage.tokens, ',.4g')} tokens ({stage.tokens:,}); "
                     f"LR {stage.lr_first:.4g} at step {stage.first_step:,} -> {stage.lr_last:.4g} at step {end:,}")
        shares = ", ".join(f"{name} {tokens / stage.tokens:.1%}"
                           for name, tokens in sorted(stage.sources.items(), key=lambda kv: -kv[1]))
        lines.append(f"             mixture: {shares}")
    lines.append(f"total: {shape.steps:,} steps, {short_count(shape.tokens, ',.4g')} tokens ({shape.tokens:,})")
    lines.append(f"checkpoints: {len(plan.checkpoint_steps):,} written ({_steps(plan.checkpoint_steps)}), "
                 f"the newest {plan.checkpoints_kept} kept, {shape.checkpoint_bytes / 2**30:,.1f} GiB each")
    lines.append("shards (budgets against the shards in OUT/data):")
    lines += [f"  {note}" for note in plan.budget_notes]
    if plan.unchecked:
        lines.append(f"  unchecked until prepared (by the run's first start, or xmodel2 prepare): "
                     f"{', '.join(plan.unchecked)}")
    return "\n".join(lines)


def problems_text(plan: DryRunPlan) -> str:
    if not plan.problems:
        return "no problems: the run can start as configured"
    return "\n".join([f"problems ({len(plan.problems)}; the run would not start until they are fixed):"]
                     + [f"  {problem}" for problem in plan.problems])


def _steps(steps: list[int]) -> str:
    if len(steps) <= 6:
        return "after steps " + ", ".join(f"{s:,}" for s in steps)
    return "after steps " + ", ".join(f"{s:,}" for s in steps[:3]) + ", ..., " + \
        ", ".join(f"{s:,}" for s in steps[-3:])

