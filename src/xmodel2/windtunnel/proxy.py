"""Proxy training: one short, real pretraining run of a small model, scored by held-out loss.

Every wind-tunnel search (LR transfer, the Bayesian μP search) asks the same question many times:
"how good is this model config at this LR?" `train_proxy` answers it with a run of the production
engine: the proxy is a run config made in memory (`proxy_run_config`: a stable stage and an
exponential decay stage over the last ~20% of the steps, both on a seeded token mixture of the
bundled corpus) that `xmodel2.train.engine.build_trainer` builds and trains exactly as
`xmodel2 pretrain` would train it (μP's AdamW groups, WSD, clipping, gradient accumulation,
compile, any device), scored by the mean next-token loss on the held-out Wikipedia validation split.
Written out as YAML, the same config trains with `xmodel2 pretrain` to the same losses, step by step.

The tokenizer and the token shards are made once into a cache folder (`prepare_proxy_data`) and
shared by every run. A run is a pure function of (model config, LR, data, settings): the weights
come from a seeded generator and the data order from the mixture's seed, so two runs with the
same inputs give the same loss. A run that diverges returns `math.inf`, never an exception.

A run trains on `settings.device`: "auto" is the GPU when there is one. `run_in_workers`
spreads independent runs over spawned worker processes, one per GPU (round-robin), or on the
CPU with its cores split between them (threads of two processes would fight).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator, Sequence

from xmodel2.errors import UserError
from xmodel2.model.config import ModelConfig, MupConfig
from xmodel2.train.engine import RunData, build_trainer
from xmodel2.train.hardware import PRECISIONS, pick_device
from xmodel2.train.runconfig import RunConfig, run_config_from_dict
from xmodel2.train.trainer import Callback, StepResult, Trainer, TrainingDiverged

# The stable-stage mixture of the embedded default config (configs/default.yaml).
DEFAULT_MIXTURE: tuple[tuple[str, float], ...] = (
    ("wiki-train", 0.45), ("shakespeare", 0.2), ("python-docs", 0.2), ("python-code", 0.1),
    ("math", 0.05))
VALIDATION_PART = "wiki-validation"

# A report callback returns True to stop the run early (e.g. an Optuna pruner's decision).
ReportCallback = Callable[[int, float], bool]


@dataclass(frozen=True)
class ProxyData:
    """Where a proxy's tokenizer and shards live (plain paths, so it pickles to workers)."""

    tokenizer: str
    vocab_size: int
    sources: dict[str, str]  # corpus part -> shard folder
    validation: str  # shard folder of the held-out validation split
    inputs: dict[str, str] = field(default_factory=dict)  # corpus part -> the text file it was made from

    def run_data(self) -> RunData:
        return RunData(Path(self.tokenizer), {**{name: Path(path) for name, path in self.sources.items()},
                                              VALIDATION_PART: Path(self.validation)})


@dataclass(frozen=True)
class ProxySettings:
    steps: int = 200
    batch_size: int = 16  # sequences per step
    seq_len: int = 64
    warmup_fraction: float = 0.1
    decay_fraction: float = 0.2  # the exponential decay takes the last 20% of the steps
    decay_halvings: float = 5.0  # the LR halves this many times over the decay (MiniCPM-like)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    micro_batch_size: int | str = "auto"  # sequences per forward/backward; auto: the whole batch if it fits
    precision: str = "auto"
    device: str = "auto"  # auto, cpu, cuda, cuda:N; workers of a search pin theirs (`pinned`)
    compile: bool = False
    val_sequences: int = 64
    eval_every: int = 0  # intermediate validations for the report callback; 0: final only
    seed: int = 0
    mixture: tuple[tuple[str, float], ...] = DEFAULT_MIXTURE

    def validate(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "val_sequences"):
            if getattr(self, name) <= 0:
                raise UserError(f"proxy {name} must be positive, got {getattr(self, name)}")
        fractions = (self.warmup_fraction, self.decay_fraction)
        if min(fractions) < 0 or sum(fractions) > 1:
            raise UserError("proxy warmup and decay fractions must be >= 0 and add up to at most 1")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        micro = self.micro_batch_size
        if micro != "auto" and (not isinstance(micro, int) or micro < 1 or self.batch_size % micro):
            raise UserError(f"micro-batch size {micro} must be auto or a divisor of the batch size "
                            f"{self.batch_size}")
        if self.eval_every < 0:
            raise UserError(f"eval_every must be >= 0, got {self.eval_every}")
        if not self.mixture or any(share <= 0 for _, share in self.mixture):
            raise UserError("proxy mixture needs at least one source with a positive share")


@dataclass
class ProxyResult:
    val_loss: float  # math.inf when the run diverged
    diverged: bool = False
    stopped_early: bool = False  # the report callback asked to stop
    steps_done: int = 0
    train_loss: float = math.nan  # of the last step
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, val loss) reported
    train_losses: list[float] = field(default_factory=list)  # every step's training loss
    seconds: float = 0.0


# ---- data -----------------------------------------------------------------------------------------

def prepare_proxy_data(cache_dir: str | Path, vocab_size: int = 2048, max_sentences: int = 100_000,
                       parts: Sequence[str] | None = None, log: Callable[[str], None] | None = None,
                       ) -> ProxyData:
    """Train the tokenizer and write the shards once under `cache_dir`; later calls reuse them.

    The tokenizer learns from the training parts only; the validation split is encoded with it
    and never enters a mixture.
    """
    from xmodel2.data.corpus import TRAIN_PARTS, corpus_file
    from xmodel2.data.prepare import prepare
    from xmodel2.tokenizer import load_tokenizer
    from xmodel2.tokenizer.train import MODEL_NAME, train_tokenizer

    parts = tuple(parts or TRAIN_PARTS)
    root = Path(cache_dir) / f"vocab{vocab_size}"
    tokenizer_dir = root / "tokenizer"
    if not (tokenizer_dir / MODEL_NAME).is_file():
        if log:
            log(f"training a {vocab_size}-piece tokenizer into {tokenizer_dir}")
        train_tokenizer([corpus_file(p) for p in TRAIN_PARTS], tokenizer_dir, vocab_size=vocab_size,
                        max_sentences=max_sentences)
    tokenizer = load_tokenizer(tokenizer_dir)
    shards = {}
    for part in parts + (VALIDATION_PART,):
        result = prepare([str(corpus_file(part))], str(tokenizer_dir), root / "shards" / part,
                         workers=2, progress=False)
        if log and not result.up_to_date:
            log(f"prepared {part}: {result.meta['tokens']:,} tokens")
        shards[part] = str(root / "shards" / part)
    validation = shards.pop(VALIDATION_PART)
    inputs = {part: str(corpus_file(part)) for part in parts + (VALIDATION_PART,)}
    return ProxyData(str(tokenizer_dir), tokenizer.vocab_size, shards, validation, inputs)


# ---- models ---------------------------------------------------------------------------------------

def proxy_model(width: int, layers: int, vocab_size: int, seq_len: int, *, mup: bool = True,
                head_dim: int = 32, dim_model_base: int = 64, scale_emb: float = 12.0,
                scale_depth: float = 1.4, init_std: float = 0.1) -> ModelConfig:
    """A small Llama-shaped proxy: fixed head_dim (heads grow with width), FFN 2.5 × width (as nano)."""
    if width % head_dim:
        raise UserError(f"width {width} is not a multiple of head_dim {head_dim}")
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=round(2.5 * width),
        num_layers=layers, num_heads=width // head_dim, num_kv_heads=width // head_dim,
        max_position_embeddings=seq_len,
        mup=MupConfig(enabled=mup, scale_emb=scale_emb, dim_model_base=dim_model_base,
                      scale_depth=scale_depth, init_std=init_std))


# ---- one run --------------------------------------------------------------------------------------

def proxy_run_config(config: ModelConfig, lr: float, data: ProxyData, settings: ProxySettings) -> RunConfig:
    """The run a proxy trial is: `settings` as a pretraining run config of `config` at peak LR
    `lr` on the prepared data (in memory; `to_dict()` gives what `xmodel2 pretrain` reads)."""
    decay_steps = round(settings.steps * settings.decay_fraction)
    stable_steps = settings.steps - decay_steps
    total = sum(share for _, share in settings.mixture)
    mixture = {name: share / total for name, share in settings.mixture}
    for name in mixture:
        if name not in data.sources:
            raise UserError(f"proxy mixture: unknown source {name!r}; sources are "
                            f"{', '.join(sorted(data.sources))}")
    sources = {name: {"inputs": [data.inputs.get(name, data.sources[name])]} for name in mixture}
    sources[VALIDATION_PART] = {"inputs": [data.inputs.get(VALIDATION_PART, data.validation)], "held_out": True}
    stages = []
    if stable_steps:
        stages.append({"name": "stable", "mixture": mixture, "steps": stable_steps})
    if decay_steps:
        stages.append({"name": "decay", "mixture": mixture, "steps": decay_steps,
                       "decay": {"shape": "exponential", "halvings": settings.decay_halvings}})
    model = config.to_dict()
    return run_config_from_dict({
        "model": model,
        "tokenizer": {"path": data.tokenizer},
        "data": {"sources": sources, "seq_len": settings.seq_len, "validation": VALIDATION_PART,
                 "validation_sequences": settings.val_sequences},
        "train": {"steps": settings.steps, "seed": settings.seed, "lr": lr,
                  "warmup_steps": min(stable_steps, round(settings.steps * settings.warmup_fraction)),
                  "weight_decay": settings.weight_decay, "grad_clip": settings.grad_clip,
                  "batch_size": settings.batch_size, "micro_batch_size": settings.micro_batch_size,
                  "precision": settings.precision, "device": settings.device, "compile": settings.compile,
                  "val_every": settings.eval_every or settings.steps, "log_every": settings.steps},
        "stages": stages,
        "checkpoint": {"every": settings.steps, "keep": 1},
    })


class _Watch(Callback):
    """Keeps a proxy's losses, ends it as diverged on a non-finite validation loss, and asks the
    search (`report`) after each intermediate validation whether to stop."""

    def __init__(self, result: ProxyResult, report: ReportCallback | None) -> None:
        self.result, self.report = result, report

    def on_step_end(self, trainer: Trainer, step: StepResult) -> None:
        self.result.train_losses.append(step.loss)
        value = step.record.get("val_loss")
        if value is None:
            return
        if not math.isfinite(value):
            raise TrainingDiverged(f"validation loss is {value} after step {step.step}")
        self.result.curve.append((step.step, value))
        if self.report is not None and step.step < trainer.settings.total_steps and self.report(step.step, value):
            trainer.stop_requested = True


def train_proxy(config: ModelConfig, lr: float, data: ProxyData, settings: ProxySettings,
                report: ReportCallback | None = None) -> ProxyResult:
    """Train `config` at peak LR `lr` for `settings.steps` steps; return the held-out loss."""
    settings.validate()
    if not lr > 0:
        raise UserError(f"learning rate must be positive, got {lr}")
    if config.vocab_size < data.vocab_size:
        raise UserError(f"model vocab_size {config.vocab_size} < the tokenizer's {data.vocab_size}")
    started = time.perf_counter()
    device = pick_device(settings.device, "--device")
    result = ProxyResult(val_loss=math.inf)
    trainer = build_trainer(proxy_run_config(config, lr, data, settings), None, device, data.run_data(),
                            callbacks=[_Watch(result, report)], validate_at_start=False)
    try:
        trainer.run()
    except TrainingDiverged:
        result.diverged = True
    result.steps_done = len(result.train_losses)
    result.train_loss = result.train_losses[-1] if result.train_losses else math.nan
    if not result.diverged and result.curve:
        result.val_loss = result.curve[-1][1]
        result.stopped_early = trainer.stop_requested
    result.seconds = time.perf_counter() - started
    return result


# ---- many runs ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProxyJob:
    """One independent run; `key` lets the caller match results to jobs."""

    key: tuple
    config: ModelConfig
    lr: float
    data: ProxyData
    settings: ProxySettings

    def cost(self) -> float:
        """Relative cost, to start the longest runs first (better packing over workers)."""
        return self.settings.steps * (self.config.num_parameters(False) + self.config.vocab_size
                                      * self.config.hidden_size)


def pinned(settings: ProxySettings, device: str) -> ProxySettings:
    """`settings` for a worker that was given `device` (see `worker_devices`)."""
    return replace(settings, device=device)


# The device this worker process was given by `_start_worker`; None in the parent process.
_WORKER_DEVICE: str | None = None


def _start_worker(counter, devices: Sequence[str], threads: int) -> None:
    """Pool initializer: the n-th worker process to start takes the n-th device."""
    import torch

    global _WORKER_DEVICE
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _WORKER_DEVICE = devices[index % len(devices)]
    torch.set_num_threads(threads)


def _run_job(job: ProxyJob) -> ProxyResult:
    settings = job.settings if _WORKER_DEVICE is None else pinned(job.settings, _WORKER_DEVICE)
    return train_proxy(job.config, job.lr, job.data, settings)


def run_in_workers(jobs: Sequence[ProxyJob], workers: int) -> Iterator[tuple[ProxyJob, ProxyResult]]:
    """Yield (job, result) as runs finish, over `workers` spawned processes placed on the
    jobs' device (`worker_devices`: one per GPU, or the CPU's cores split between them)."""
    from xmodel2.train.study import threads_per_worker, worker_devices

    ordered = sorted(jobs, key=lambda j: -j.cost())
    if not ordered:
        return
    devices = worker_devices(ordered[0].settings.device, max(1, workers))
    threads = threads_per_worker(len(devices))
    if workers <= 1:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for job in ordered:
                yield job, train_proxy(job.config, job.lr, job.data, pinned(job.settings, devices[0]))
        finally:
            torch.set_num_threads(before)
        return
    context = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker,
                             initargs=(context.Value("i", 0), devices, threads)) as pool:
        futures = {pool.submit(_run_job, job): job for job in ordered}
        for future in as_completed(futures):
            yield futures[future], future.result()

