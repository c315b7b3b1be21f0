"""One pretraining run, start to finish: tokenizer, shards, model, stages, resume, final report.

`run_pretraining` is what `xmodel2 pretrain` calls. Each preparation step is idempotent (a
tokenizer or shard folder that already exists with the right fingerprint is reused), and the run
resumes from the newest complete checkpoint in its output folder, so re-running the same command
after a kill continues exactly where the last checkpoint left off.

Under torchrun the same function runs on every rank: rank 0 prepares the tokenizer and shards
while the others wait, each rank takes its contiguous share of every global batch, and only
rank 0 prints, logs and writes the model folder (the output folder must be on a file system
every rank sees, since each rank also writes its optimizer shard into the checkpoint).
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from xmodel2.data.plan import DataPlan, micro_batches_per_rank
from xmodel2.errors import UserError
from xmodel2.fileio import atomic_write_json, read_json
from xmodel2.folders import claim_run_folder
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import WEIGHTS_NAME, build_model, load_state_into, read_safetensors
from xmodel2.model.mup import build_optimizer
from xmodel2.train import distributed, flops
from xmodel2.train.checkpoint import STATE_FILE, latest_checkpoint
from xmodel2.train.dist_checkpoint import newest_resumable_checkpoint, restore_optimizer
from xmodel2.train.hardware import measure_matmul_flops, pick_device, resolve_precision
from xmodel2.train.metrics import MatmulPeak, MetricsLogger, Progress
from xmodel2.train.runconfig import REPORT_HALF_LIFE, RunConfig, model_config
from xmodel2.train.schedule import BatchSchedule, WSDSchedule, largest_micro_batch
from xmodel2.train.trainer import LoopSettings, Trainer, evaluate_loss


@dataclass
class StagePlan:
    name: str
    start: int  # first global step
    end: int  # one past the last step
    dataset: object  # MixtureDataset


@dataclass
class RunResult:
    out_dir: Path
    final_checkpoint: Path
    val_loss_start: float | None
    val_loss_end: float | None
    test_perplexity: float | None
    sample: str | None


def say(message: str) -> None:
    if distributed.is_main_process():
        print(message, file=sys.stderr, flush=True)


# ---- preparation -----------------------------------------------------------------------------------

def training_inputs(run: RunConfig) -> list[Path]:
    inputs = []
    for source in run.data.sources.values():
        if not source.held_out:
            inputs.extend(run.resolve_path(p) for p in source.inputs)
    return inputs


def prepare_tokenizer(run: RunConfig, out_dir: Path) -> Path:
    """The tokenizer folder or file to use: the configured one, or one trained once per run folder."""
    from xmodel2.tokenizer import load_tokenizer

    if run.tokenizer.path:
        path = run.resolve_path(run.tokenizer.path)
        load_tokenizer(path)  # fail early and clearly on a bad file
        return path
    tokenizer_dir = out_dir / "tokenizer"
    if (tokenizer_dir / "tokenizer.model").is_file():
        return tokenizer_dir
    from xmodel2.tokenizer.train import train_tokenizer

    say(f"xmodel2: training a {run.tokenizer.vocab_size}-piece Unigram tokenizer on the training sources")
    train_tokenizer(training_inputs(run), tokenizer_dir, vocab_size=run.tokenizer.vocab_size,
                    max_sentences=run.tokenizer.max_sentences, seed=run.train.seed)
    return tokenizer_dir


def prepare_sources(run: RunConfig, out_dir: Path, tokenizer_path: Path) -> dict[str, Path]:
    """Token shards for every source under OUT/data/<source> (reused when already complete)."""
    from xmodel2.data.prepare import prepare

    shard_dirs = {}
    for name, source in run.data.sources.items():
        shard_dir = out_dir / "data" / name
        result = prepare([str(run.resolve_path(p)) for p in source.inputs], str(tokenizer_path),
                         shard_dir, jsonl_field=source.jsonl_field, workers=run.data.workers)
        if not result.up_to_date:
            say(f"xmodel2: prepared {name}: {result.meta['tokens']:,} tokens in {shard_dir}")
        shard_dirs[name] = shard_dir
    return shard_dirs


# ---- checks before any work ------------------------------------------------------------------------

def check_run(run: RunConfig, out_dir: Path, init_from: str | Path | None, device: torch.device,
              world: int = 1) -> None:
    """Refuse a run that cannot work before any tokenizer training, shard preparation or output:
    the model settings, the sequence length against the context, the batch split, `--init-from`,
    the inputs, the memory of one micro-batch step, and a resume under different settings."""
    config = model_config(run, _expected_vocab_size(run, out_dir))
    if run.data.seq_len > config.max_position_embeddings:
        raise UserError(f"data.seq_len={run.data.seq_len} exceeds the model's context "
                        f"(model.max_position_embeddings={config.max_position_embeddings})")
    run = _settled_micro_batch(run, config, device, world)
    if init_from is not None and latest_checkpoint(out_dir) is None:
        _check_is_checkpoint(Path(init_from))
    for path in training_inputs(run) + _held_out_inputs(run):
        if not path.exists():
            raise UserError(f"{path}: input not found (data.sources)")
    _check_memory(run, config, device, world)
    own = latest_checkpoint(out_dir)
    if own is not None:
        check_resume_matches(own, run)


def _expected_vocab_size(run: RunConfig, out_dir: Path | None) -> int:
    """The vocabulary the model will get: the given or already trained tokenizer's, else the
    configured size of the one to train (which may come out smaller, never larger)."""
    from xmodel2.tokenizer import load_tokenizer

    if run.tokenizer.path:
        return load_tokenizer(run.resolve_path(run.tokenizer.path)).vocab_size
    if out_dir is not None and (out_dir / "tokenizer" / "tokenizer.model").is_file():
        return load_tokenizer(out_dir / "tokenizer").vocab_size
    return run.tokenizer.vocab_size


def _held_out_inputs(run: RunConfig) -> list[Path]:
    return [run.resolve_path(p) for s in run.data.sources.values() if s.held_out for p in s.inputs]


def _check_is_checkpoint(path: Path) -> None:
    if not path.is_dir():
        raise UserError(f"{path}: checkpoint folder not found (--init-from)")
    if not (path / STATE_FILE).is_file():
        raise UserError(f"{path}: not a training checkpoint (no {STATE_FILE}); --init-from takes a "
                        "folder under a run's checkpoints/")


def settle_micro_batch(run: RunConfig, device: torch.device, world: int = 1,
                       out_dir: Path | None = None) -> RunConfig:
    """`run` with `train.micro_batch_size: auto` settled for `world` ranks on `device` (an explicit
    size is kept); the split of the global batch is checked either way. `out_dir` is the run
    folder, whose trained tokenizer (if any) gives the vocabulary the memory estimate counts."""
    return _settled_micro_batch(run, model_config(run, _expected_vocab_size(run, out_dir)), device, world)


def _settled_micro_batch(run: RunConfig, config: ModelConfig, device: torch.device, world: int) -> RunConfig:
    from xmodel2.train.hardware import available_memory

    if run.train.micro_batch_size == "auto":
        size = auto_micro_batch(run, config, world, available_memory(device))
        # Ranks may see different free memory; all must split the batch alike, so rank 0 decides.
        size = int(distributed.all_reduce_sum(size if distributed.rank() == 0 else 0, device))
        run = replace(run, train=replace(run.train, micro_batch_size=size))
    _check_split(run, world)
    return run


# A micro-batch chosen for the user fills at most this share of the free memory: the estimate is a
# lower bound, and allocator slack, temporaries and other processes need the rest.
AUTO_MEMORY_SHARE = 0.5


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
        return sum(_step_bytes(run, config, micro, world).values()) <= AUTO_MEMORY_SHARE * available

    return largest_micro_batch([size // world for size in sizes], fits)


def _check_split(run: RunConfig, world: int) -> None:
    micro = run.train.micro_batch_size
    for _, size in batch_schedule(run).segments:
        try:
            micro_batches_per_rank(size, micro, world)
        except ValueError:
            raise UserError(f"train.batch_size: a global batch of {size} sequences does not split into "
                            f"micro-batches of {micro} (train.micro_batch_size) on {world} rank(s); "
                            "give a divisor of the batch per rank, or auto") from None


def _step_bytes(run: RunConfig, config: ModelConfig, micro: int, world: int) -> dict[str, int]:
    from xmodel2.train.hardware import training_step_bytes

    shards = world if run.parallel.strategy == "fsdp" else 1
    return training_step_bytes(config, micro, run.data.seq_len, run.train.precision,
                               run.parallel.activation_checkpointing, shards)


def _check_memory(run: RunConfig, config: ModelConfig, device: torch.device, world: int) -> None:
    from xmodel2.train.hardware import available_memory

    parts = _step_bytes(run, config, run.train.micro_batch_size, world)
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


# ---- planning --------------------------------------------------------------------------------------

def batch_schedule(run: RunConfig) -> BatchSchedule:
    if run.train.batch_schedule:
        return BatchSchedule(tuple((int(s), int(b)) for s, b in run.train.batch_schedule))
    return BatchSchedule.constant(run.train.batch_size)


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
    from xmodel2.data.mixture import MixtureDataset, SourceSpec
    from xmodel2.data.sft_mask import shard_assistant_mask

    masks = {name: shard_assistant_mask(shard_dirs[name], tokenizer)
             for name, source in run.data.sources.items() if source.mask_prompts}

    plans, start = [], 0
    for index, (stage, n_steps) in enumerate(zip(run.stages, run.stage_steps())):
        end = start + n_steps
        stage_tokens = (batches.offset(end) - batches.offset(start)) * run.data.seq_len
        specs = []
        for source, amount in stage.mixture.items():
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


# ---- the run ---------------------------------------------------------------------------------------

def run_pretraining(run: RunConfig, out_dir: str | Path, init_from: str | Path | None = None,
                    show_progress: bool = True) -> RunResult:
    """The run holds OUT (a new, empty or run folder) locked from start to end (see folders.py)."""
    if not distributed.launched_by_torchrun():
        with claim_run_folder(out_dir):
            return _run(run, Path(out_dir), init_from, show_progress, pick_device(run.train.device))
    device = distributed.init_distributed(run.train.device)
    try:
        # Ranks may sit on other nodes, where a lock would not exclude anything: rank 0 holds it.
        with claim_run_folder(out_dir) if distributed.is_main_process() else contextlib.nullcontext():
            return _run(run, Path(out_dir), init_from, show_progress, device)
    finally:
        distributed.shutdown_distributed()


def _run(run: RunConfig, out_dir: Path, init_from: str | Path | None, show_progress: bool,
         device: torch.device) -> RunResult:
    world, rank = distributed.world_size(), distributed.rank()
    # "auto" is settled once, here, so the run folder records the precision and micro-batch used.
    run = replace(run, train=replace(run.train, precision=resolve_precision(run.train.precision, device)))
    run = settle_micro_batch(run, device, world, out_dir)
    if distributed.is_distributed() and world > 1 and run.parallel.strategy == "none":
        raise UserError(f"parallel.strategy=none cannot train on {world} ranks; use ddp or fsdp")
    check_run(run, out_dir, init_from, device, world)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(run.train.seed)
    from xmodel2.tokenizer import load_tokenizer

    with distributed.main_process_first():  # one rank prepares; the others find it done
        tokenizer_path = prepare_tokenizer(run, out_dir)
        shard_dirs = prepare_sources(run, out_dir, tokenizer_path)
    tokenizer = load_tokenizer(tokenizer_path)
    config = model_config(run, tokenizer.vocab_size)
    if tokenizer.vocab_size > config.vocab_size:
        raise UserError(f"model.vocab_size={config.vocab_size} is smaller than the tokenizer's "
                        f"{tokenizer.vocab_size} pieces")
    config = config.replace(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                            pad_token_id=tokenizer.pad_id)
    batches = batch_schedule(run)
    schedule = lr_schedule(run)
    plans = plan_stages(run, shard_dirs, batches, tokenizer)
    model = build_model(config, seed=run.train.seed).to(device)
    source = _resume_source(out_dir, init_from, config)
    if source is not None and source.parent == out_dir / "checkpoints":
        check_resume_matches(source, run)
    for plan in plans:  # after the checks of the resume, so that a refusal is the only line
        say(f"xmodel2: stage {plan.name!r}, steps {plan.start}-{plan.end - 1}\n{plan.dataset.describe()}")
    if source is not None:  # full weights go in before any sharding
        load_state_into(model, read_safetensors(source / WEIGHTS_NAME), str(source))
    loss_module, compiled = _wrap(model, run, device)
    optimizer = build_optimizer(model, config, lr=run.train.lr, weight_decay=run.train.weight_decay,
                                betas=(run.train.beta1, run.train.beta2), eps=run.train.eps,
                                implementation=run.train.optimizer_impl)
    resolved = run.to_dict() | {"resolved_model": config.to_dict()}
    start_step, start_tokens = 0, 0
    if source is not None:
        restore_optimizer(source, model, optimizer)
        meta = read_json(source / STATE_FILE, "trainer state")
        start_step, start_tokens = int(meta["step"]), int(meta["tokens"])
        say(f"xmodel2: resuming from {source} (step {start_step}, {start_tokens:,} tokens)")

    data = DataPlan(plans, batches, run.train.micro_batch_size, world)
    val_blocks = _validation_blocks(run, shard_dirs)
    peak_dtype = torch.bfloat16 if run.train.precision == "bf16" else torch.float32
    # Up to 8192 wide (it stops growing where a CPU gets slow): 1024-wide products leave a GPU
    # waiting on kernel launches far below its peak, and every MFU would come out too high.
    peak = measure_matmul_flops(peak_dtype, device, size=8192)
    settings = LoopSettings(
        total_steps=run.train.steps, seq_len=run.data.seq_len,
        grad_clip=run.train.grad_clip, precision=run.train.precision, log_every=run.train.log_every,
        val_every=run.train.val_every, checkpoint_every=run.checkpoint.every,
        checkpoint_keep=run.checkpoint.keep,
        flops_per_token=flops.training_flops_per_token(config, run.data.seq_len),
        peak_flops=peak * world, rank=rank)
    main = distributed.is_main_process()
    logger = MetricsLogger(out_dir, resume_step=start_step, write=main, peak=MatmulPeak(
        peak * world, remeasure=lambda: world * measure_matmul_flops(peak_dtype, device, size=8192)))
    trainer = Trainer(model, optimizer, settings, data, schedule.factor, run.train.lr, out_dir,
                      resolved, logger, device, validation=val_blocks, tokenizer_dir=tokenizer_path,
                      compiled_model=compiled, loss_module=loss_module)
    trainer.step, trainer.tokens = start_step, start_tokens
    if main:
        atomic_write_json(out_dir / "run_config.json", resolved)

    val_start = None
    if start_step == 0 and val_blocks:
        val_start = trainer.validate()
        logger.log({"step": 0, "tokens": 0, "loss": val_start, "lr": 0.0, "val_loss": val_start,
                    "stage": plans[0].name})
    say(f"xmodel2: {config.num_parameters():,} parameters ({config.num_parameters(False):,} "
        f"non-embedding), {settings.flops_per_token / 1e6:.1f} MFLOP/token, device {device}, "
        f"{run.train.precision}, matmul peak {peak / 1e9:.0f} GFLOP/s"
        + (f" per rank, {world} ranks ({run.parallel.strategy})" if distributed.is_distributed() else ""))
    progress = Progress(run.train.steps, start_step, logger) if show_progress and main else None
    try:
        trainer.run(progress)
    finally:
        if progress is not None:
            progress.close()
        logger.close()
    final = latest_checkpoint(out_dir)
    return RunResult(out_dir=out_dir, final_checkpoint=final, val_loss_start=val_start,
                     val_loss_end=logger.last_val, test_perplexity=None, sample=None)


def _resume_source(out_dir: Path, init_from, config: ModelConfig) -> Path | None:
    """This run's newest checkpoint, else `init_from` to branch from, else None (a fresh start)."""
    source = newest_resumable_checkpoint(out_dir, say)
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


def _wrap(model, run: RunConfig, device: torch.device):
    """(loss module, compiled model) for the trainer: distributed, `parallelize` does it all
    (compiling per block); a plain process keeps the model and compiles it whole."""
    if distributed.is_distributed():
        strategy = run.parallel.strategy
        loss_module = distributed.parallelize(
            model, strategy, device, activation_checkpointing=run.parallel.activation_checkpointing,
            compile_blocks=run.train.compile,
            bf16_params=strategy == "fsdp" and device.type == "cuda" and run.train.precision == "bf16")
        return loss_module, None
    if run.parallel.activation_checkpointing:
        distributed.apply_activation_checkpointing(model)
    return None, torch.compile(model) if run.train.compile else None


def _validation_blocks(run: RunConfig, shard_dirs: dict[str, Path]) -> list[torch.Tensor]:
    if run.data.validation is None:
        return []
    from xmodel2.data.mixture import SequentialDataset

    data = SequentialDataset(str(shard_dirs[run.data.validation]), run.data.seq_len,
                             max_sequences=run.data.validation_sequences)
    n = len(data)
    size = run.train.micro_batch_size
    return [data.sequences(range(i, min(n, i + size))) for i in range(0, n, size)]


def held_out_perplexity(model, run: RunConfig, shard_dir: Path, device: torch.device) -> float:
    from xmodel2.data.mixture import SequentialDataset

    data = SequentialDataset(str(shard_dir), run.data.seq_len, max_sequences=run.finish.perplexity_sequences)
    size = run.train.micro_batch_size
    blocks = [data.sequences(range(i, min(len(data), i + size))) for i in range(0, len(data), size)]
    return math.exp(evaluate_loss(model, blocks, run.train.precision, device))
