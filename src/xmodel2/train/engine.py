"""From a run description to a running trainer, in one place: `build_trainer`.

`build_trainer(run, out_dir, device, data)` builds everything a run trains with: the model (fresh
from the run's seed, or the weights of the checkpoint it resumes or branches from), the μP
optimizer, the data plan of its stages, the WSD schedule, the parallel wrapping under torchrun,
and the callbacks (validation, in-loop task scores, metrics, checkpoints). `xmodel2 pretrain`,
every wind-tunnel proxy trial and lr-transfer point, and every ratio-search branch are a run
config (most made in memory) handed to it, so what a search tunes is what a real run trains.

`out_dir=None` builds a run that lives in memory: no metrics file, no checkpoints and nothing
printed, for the many short runs of a search. Token shards come from `prepare_run_data` (a run's
own folder) or from any prepared shard folders (`RunData`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from xmodel2.data.mixture import MixtureDataset, SourceSpec, held_out_blocks
from xmodel2.data.plan import DataPlan
from xmodel2.data.readers import read_documents
from xmodel2.data.sft_mask import shard_assistant_mask
from xmodel2.errors import UserError
from xmodel2.fileio import atomic_write_json, read_json
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import WEIGHTS_NAME, build_model, load_state_into, read_safetensors
from xmodel2.model.mup import build_optimizer
from xmodel2.tokenizer import load_tokenizer
from xmodel2.train import distributed, flops
from xmodel2.train.callbacks import LogMetrics, SaveCheckpoints, ScoreTasks, Validate
from xmodel2.train.checkpoint import STATE_FILE
from xmodel2.train.dist_checkpoint import newest_resumable_checkpoint, restore_optimizer
from xmodel2.train.distributed import say
from xmodel2.train.hardware import measure_matmul_flops, resolve_precision
from xmodel2.train.metrics import MatmulPeak, MetricsLogger, Progress
from xmodel2.train.runconfig import REPORT_HALF_LIFE, RunConfig, model_config
from xmodel2.train.schedule import BatchSchedule, WSDSchedule
from xmodel2.train.sizing import batch_schedule, settle_micro_batch
from xmodel2.train.trainer import Callback, LoopSettings, Trainer


@dataclass(frozen=True)
class RunData:
    """The tokenizer (folder or file) and one token-shard folder per source of a run."""

    tokenizer: Path
    shards: dict[str, Path]


@dataclass
class StagePlan:
    name: str
    start: int  # first global step
    end: int  # one past the last step
    dataset: MixtureDataset


# ---- preparation -----------------------------------------------------------------------------------

def training_inputs(run: RunConfig) -> list[Path]:
    inputs = []
    for source in run.data.sources.values():
        if not source.held_out:
            inputs.extend(run.resolve_path(p) for p in source.inputs)
    return inputs


def prepare_tokenizer(run: RunConfig, out_dir: Path) -> Path:
    """The tokenizer folder or file to use: the configured one, or one trained once per run folder."""
    if run.tokenizer.path:
        path = run.resolve_path(run.tokenizer.path)
        load_tokenizer(path)  # fail early and clearly on a bad file
        return path
    tokenizer_dir = out_dir / "tokenizer"
    if (tokenizer_dir / "tokenizer.model").is_file():
        return tokenizer_dir
    from xmodel2.tokenizer.train import train_tokenizer

    say(f"training a {run.tokenizer.vocab_size}-piece Unigram tokenizer on the training sources")
    train_tokenizer(training_inputs(run), tokenizer_dir, vocab_size=run.tokenizer.vocab_size,
                    max_sentences=run.tokenizer.max_sentences, seed=run.train.seed,
                    read_documents=lambda _inputs, _field: _training_documents(run))
    return tokenizer_dir


def _training_documents(run: RunConfig):
    """The training sources' documents, each source read in its own format and field."""
    for source in run.data.sources.values():
        if not source.held_out:
            yield from read_documents([run.resolve_path(p) for p in source.inputs], source.jsonl_field)


def prepare_sources(run: RunConfig, out_dir: Path, tokenizer_path: Path) -> dict[str, Path]:
    """Token shards for every source under OUT/data/<source> (reused when already complete)."""
    from xmodel2.data.prepare import prepare

    shard_dirs = {}
    for name, source in run.data.sources.items():
        shard_dir = out_dir / "data" / name
        result = prepare([str(run.resolve_path(p)) for p in source.inputs], str(tokenizer_path),
                         shard_dir, jsonl_field=source.jsonl_field, workers=run.data.workers)
        if not result.up_to_date:
            say(f"prepared {name}: {result.meta['tokens']:,} tokens in {shard_dir}")
        shard_dirs[name] = shard_dir
    return shard_dirs


def prepare_run_data(run: RunConfig, out_dir: Path) -> RunData:
    """The run's tokenizer and shards under `out_dir` (each made once, then reused)."""
    tokenizer = prepare_tokenizer(run, out_dir)
    return RunData(tokenizer, prepare_sources(run, out_dir, tokenizer))


# ---- planning --------------------------------------------------------------------------------------

def lr_schedule(run: RunConfig) -> WSDSchedule:
    """Warmup (capped at the first decay step), then the first decay stage's curve to the end."""
    decay_start, decay, decay_steps = run.train.steps, None, 0
    start = 0
    for stage, n in zip(run.stages, run.stage_steps()):
        if stage.decay is not None:
            decay_start, decay, decay_steps = start, stage.decay, n
            break
        start += n
    return WSDSchedule(warmup_steps=min(run.warmup_steps(), decay_start), decay_start=decay_start,
                       total_steps=run.train.steps,
                       shape=decay.shape if decay else "exponential",
                       half_life=decay.half_life_steps(decay_steps) if decay else REPORT_HALF_LIFE,
                       floor=decay.floor if decay else 0.0)


def plan_stages(run: RunConfig, shard_dirs: dict[str, Path], batches: BatchSchedule,
                tokenizer=None) -> list[StagePlan]:
    masks = {name: shard_assistant_mask(shard_dirs[name], tokenizer)
             for name, source in run.data.sources.items() if source.mask_prompts}

    plans, start = [], 0
    for index, (stage, n_steps) in enumerate(zip(run.stages, run.stage_steps())):
        end = start + n_steps
        stage_tokens = (batches.offset(end) - batches.offset(start)) * run.data.seq_len
        specs = []
        # In name order: a mixture is a mapping, and how a file lists it must not change the data order.
        for source, amount in sorted(stage.mixture.items()):
            tokens = int(amount) if amount > 1 else _share_tokens(amount, stage_tokens, run.data.seq_len)
            if tokens > 0:
                specs.append(SourceSpec(name=source, path=str(shard_dirs[source]), tokens=tokens,
                                        max_repeats=stage.max_repeats, target_mask=masks.get(source)))
        dataset = MixtureDataset(specs, seq_len=run.data.seq_len, seed=run.train.seed + 1000 * index)
        plans.append(StagePlan(stage.name, start, end, dataset))
        start = end
    return plans


def _share_tokens(share: float, stage_tokens: int, seq_len: int) -> int:
    """Tokens of a mixture share; a positive share gets at least one sequence, so that a run cut
    short (a smoke test of a few steps) still draws on every source its mixture names."""
    tokens = int(round(share * stage_tokens))
    return max(tokens, seq_len) if share > 0 else 0


# ---- building --------------------------------------------------------------------------------------

def settle_run(run: RunConfig, device: torch.device, world: int = 1, out_dir: Path | None = None) -> RunConfig:
    """`run` with what `auto` means on this device settled once (precision, micro-batch), so the
    run folder records what was used and every rank trains alike."""
    run = replace(run, train=replace(run.train, precision=resolve_precision(run.train.precision, device)))
    return settle_micro_batch(run, device, world, out_dir)


def build_trainer(run: RunConfig, out_dir: Path | None, device: torch.device, data: RunData, *,
                  init_from: str | Path | None = None, callbacks: Sequence[Callback] = (),
                  show_progress: bool = False, validate_at_start: bool = True) -> Trainer:
    """A `Trainer` for `run` on `device`, ready to `run()`: resuming from the newest checkpoint in
    `out_dir`, else branching from `init_from` (weights, optimizer state and step), else fresh.

    `callbacks` run after validation and task scoring (they see `val_loss` and `eval/...` in the
    step's record) and before metrics and checkpoints are written. With `out_dir=None` the run
    writes and prints nothing.
    """
    world, rank = distributed.world_size(), distributed.rank()
    run = settle_run(run, device, world, out_dir)
    if world > 1 and run.parallel.strategy == "none":
        raise UserError(f"parallel.strategy=none cannot train on {world} ranks; use ddp or fsdp")
    torch.manual_seed(run.train.seed)
    tokenizer = load_tokenizer(data.tokenizer)
    config = _model_config(run, tokenizer)
    batches = batch_schedule(run)
    plans = plan_stages(run, data.shards, batches, tokenizer)
    model = build_model(config, seed=run.train.seed).to(device)
    source = _resume_source(out_dir, init_from, config)
    if source is not None and out_dir is not None and source.parent == out_dir / "checkpoints":
        check_resume_matches(source, run)
    verbose = out_dir is not None
    if verbose:  # after the checks of the resume, so that a refusal is the only line
        for plan in plans:
            say(f"stage {plan.name!r}, steps {plan.start}-{plan.end - 1}\n{plan.dataset.describe()}")
    if source is not None:  # full weights go in before any sharding
        load_state_into(model, read_safetensors(source / WEIGHTS_NAME), str(source))
    loss_module = _wrap(model, run, device)
    optimizer = build_optimizer(model, config, lr=run.train.lr, weight_decay=run.train.weight_decay,
                                betas=(run.train.beta1, run.train.beta2), eps=run.train.eps,
                                implementation=run.train.optimizer_impl)
    start_step, start_tokens = 0, 0
    if source is not None:
        restore_optimizer(source, model, optimizer)
        meta = read_json(source / STATE_FILE, "trainer state")
        start_step, start_tokens = int(meta["step"]), int(meta["tokens"])
        if verbose:
            say(f"resuming from {source} (step {start_step}, {start_tokens:,} tokens)")

    plan = DataPlan(plans, batches, run.train.micro_batch_size, world)
    settings = LoopSettings(total_steps=run.train.steps, seq_len=run.data.seq_len, grad_clip=run.train.grad_clip,
                            precision=run.train.precision, rank=rank)
    measuring = [Validate(_validation_blocks(run, data.shards), run.train.val_every, at_start=validate_at_start)]
    if run.train.eval_tasks:
        measuring.append(ScoreTasks(_task_scorer(run, tokenizer), run.train.eval_every or run.train.val_every))
    resolved = run.to_dict() | {"resolved_model": config.to_dict()}
    writing = _writing_callbacks(run, out_dir, device, config, data.tokenizer, start_step, show_progress)
    trainer = Trainer(model, optimizer, settings, plan, lr_schedule(run).factor, run.train.lr, device,
                      loss_module=loss_module, callbacks=measuring + list(callbacks) + writing,
                      run_config=resolved)
    trainer.step, trainer.tokens = start_step, start_tokens
    if verbose and distributed.is_main_process():
        atomic_write_json(out_dir / "run_config.json", resolved)
    return trainer


def _model_config(run: RunConfig, tokenizer) -> ModelConfig:
    config = model_config(run, tokenizer.vocab_size)
    if tokenizer.vocab_size > config.vocab_size:
        raise UserError(f"model.vocab_size={config.vocab_size} is smaller than the tokenizer's "
                        f"{tokenizer.vocab_size} pieces")
    return config.replace(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                          pad_token_id=tokenizer.pad_id)


def _writing_callbacks(run: RunConfig, out_dir: Path | None, device: torch.device, config: ModelConfig,
                       tokenizer_dir: Path, start_step: int, show_progress: bool) -> list[Callback]:
    """Metrics (with throughput against a measured matmul peak), progress and checkpoints."""
    if out_dir is None:
        return []
    world = distributed.world_size()
    peak_dtype = torch.bfloat16 if run.train.precision == "bf16" else torch.float32
    # Up to 8192 wide (it stops growing where a CPU gets slow): 1024-wide products leave a GPU
    # waiting on kernel launches far below its peak, and every MFU would come out too high.
    peak = measure_matmul_flops(peak_dtype, device, size=8192)
    flops_per_token = flops.training_flops_per_token(config, run.data.seq_len)
    main = distributed.is_main_process()
    logger = MetricsLogger(out_dir, resume_step=start_step, write=main, peak=MatmulPeak(
        peak * world, remeasure=lambda: world * measure_matmul_flops(peak_dtype, device, size=8192)))
    say(f"{config.num_parameters():,} parameters ({config.num_parameters(False):,} non-embedding), "
        f"{flops_per_token / 1e6:.1f} MFLOP/token, device {device}, {run.train.precision}, "
        f"matmul peak {peak / 1e9:.0f} GFLOP/s"
        + (f" per rank, {world} ranks ({run.parallel.strategy})" if distributed.is_distributed() else ""))
    progress = Progress(run.train.steps, start_step, logger) if show_progress and main else None
    return [LogMetrics(logger, run.train.log_every, flops_per_token, peak * world, progress),
            SaveCheckpoints(out_dir, run.checkpoint.every, run.checkpoint.keep, tokenizer_dir)]


def _task_scorer(run: RunConfig, tokenizer):
    from xmodel2.eval.runner import task_accuracies

    def score(model: torch.nn.Module) -> dict[str, float]:
        return task_accuracies(model, tokenizer, run.train.eval_tasks, run.train.eval_limit)
    return score


def _validation_blocks(run: RunConfig, shard_dirs: dict[str, Path]) -> list[torch.Tensor]:
    if run.data.validation is None:
        return []
    return held_out_blocks(shard_dirs[run.data.validation], run.data.seq_len, run.data.validation_sequences,
                           run.train.micro_batch_size)


def _resume_source(out_dir: Path | None, init_from, config: ModelConfig) -> Path | None:
    """This run's newest checkpoint, else `init_from` to branch from, else None (a fresh start)."""
    source = newest_resumable_checkpoint(out_dir, say) if out_dir is not None else None
    if source is None and init_from is not None:
        source = Path(init_from)
        if not source.is_dir():
            raise UserError(f"{source}: checkpoint folder not found")
    if source is None:
        return None
    meta = read_json(source / STATE_FILE, "trainer state")
    saved_model = (meta.get("run_config") or {}).get("resolved_model")
    if saved_model is not None and saved_model != config.to_dict():
        raise UserError(f"{source}: the checkpoint's model config differs from this run's; "
                        "use a new --out folder or the same model settings")
    return source


def _wrap(model, run: RunConfig, device: torch.device) -> torch.nn.Module:
    """The loss module the trainer calls: distributed, `parallelize` does it all (compiling per
    block); a plain process keeps the model and compiles it whole."""
    if distributed.is_distributed():
        strategy = run.parallel.strategy
        return distributed.parallelize(
            model, strategy, device, activation_checkpointing=run.parallel.activation_checkpointing,
            compile_blocks=run.train.compile,
            bf16_params=strategy == "fsdp" and device.type == "cuda" and run.train.precision == "bf16")
    if run.parallel.activation_checkpointing:
        distributed.apply_activation_checkpointing(model)
    return distributed.LossModule(torch.compile(model) if run.train.compile else model)


# ---- resuming --------------------------------------------------------------------------------------

# Settings that decide which tokens each step sees: a resume under other values would silently
# train on a different data order than the checkpoint's run.
RESUME_SETTINGS = (("train", "batch_size"), ("train", "batch_schedule"), ("train", "seed"),
                   ("train", "micro_batch_size"), ("data", "seq_len"))


def check_resume_matches(checkpoint: Path, run: RunConfig) -> None:
    """Refuse to resume `checkpoint` (this run's own) under different batch, seed or sequence
    settings; both values are named."""
    try:
        meta = read_json(checkpoint / STATE_FILE, "trainer state")
    except UserError:
        return  # a damaged checkpoint: resuming reports it (or falls back to an older one)
    saved = meta.get("run_config") if isinstance(meta, dict) else None
    if not isinstance(saved, dict):
        return  # a checkpoint from before run configs were saved: nothing to compare
    current = run.to_dict()
    for section, key in RESUME_SETTINGS:
        if key == "micro_batch_size" and run.train.batch_schedule is None:
            continue  # the micro-batch only splits the work; without a schedule the data order ignores it
        before = (saved.get(section) or {}).get(key, current[section][key])
        if before != current[section][key]:
            raise UserError(f"{section}.{key}={current[section][key]} differs from {before} in {checkpoint} "
                            "that this run resumes; resume with the same value or use a new --out")
