"""The `xmodel2 pretrain` run config: typed sections read from YAML plus command-line overrides.

A run lists its data sources (files prepared into token shards), a tokenizer (given, or trained
on the training sources), a model (a preset plus overrides), optimiser settings, and stages:
usually `stable` (warmup + constant LR) then `decay` (the report's exponential decay), each with
its own mixture stated in tokens (or shares of the stage's tokens) per source.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmodel2.configfile import (apply_overrides, bounded, load_sections, one_of, override_texts,
                                read_yaml, to_plain)
from xmodel2.data.corpus import BUNDLED_ROOT
from xmodel2.errors import UserError
from xmodel2.model.config import ModelConfig, MupConfig, preset, reject_unknown_keys
from xmodel2.tokenizer.train import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE
from xmodel2.train.schedule import (DECAY_SHAPES, BatchSchedule, StageSplitError, is_length, length_steps,
                                    split_steps)

PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = PACKAGE_CONFIGS / "default.yaml"


@dataclass
class SourceSection:
    inputs: list[str]  # files or folders (text, JSONL, .gz), relative to the config file
    jsonl_field: str = "text"
    held_out: bool = False  # validation/test text: never allowed in a training mixture
    # ChatML (SFT) text: train only on assistant turns; the report trains on whole texts (false)
    mask_prompts: bool = False


@dataclass
class TokenizerSection:
    path: str | None = None  # an existing tokenizer; None trains one on the training sources
    vocab_size: int = bounded(4096, at_least=MIN_VOCAB_SIZE, at_most=MAX_VOCAB_SIZE)
    max_sentences: int = bounded(300000, at_least=1)


@dataclass
class DataSection:
    sources: dict[str, SourceSection] = field(default_factory=dict)
    seq_len: int = bounded(256, at_least=1)
    validation: str | None = None  # a held-out source used for val_loss
    validation_sequences: int = bounded(64, at_least=1)
    test: str | None = None  # a held-out source for the final perplexity
    workers: int = bounded(2, at_least=1)


REPORT_HALF_LIFE = 5000.0  # steps: the report's exponential decay


@dataclass
class DecaySection:
    shape: str = one_of(*DECAY_SHAPES)
    # The exponential shape's half-life, in steps or as `halvings` (at most one of them): the LR
    # halves that many times over the stage, so the curve keeps its shape when the stage is
    # shorter or longer. Neither: the report's 5000 steps.
    half_life: float | None = bounded(None, above=0)
    halvings: float | None = bounded(None, above=0)
    floor: float = bounded(0.0, at_least=0, at_most=1)  # a fraction of the peak LR

    def half_life_steps(self, stage_steps: int) -> float:
        if self.halvings is not None:
            return stage_steps / self.halvings
        return self.half_life if self.half_life is not None else REPORT_HALF_LIFE


@dataclass
class StageSection:
    name: str
    # source -> tokens (> 1) or share of the stage's tokens (<= 1)
    mixture: dict[str, float] = bounded(at_least=0)
    # A whole number of steps, or a fraction of train.steps in (0, 1) (see `split_steps` for the
    # rounding); None: what train.steps leaves after the other stages
    steps: int | float | None = bounded(None, above=0)
    decay: DecaySection | None = None
    max_repeats: float = bounded(4.0, above=0)


@dataclass
class TrainSection:
    steps: int = bounded(600, at_least=1)
    seed: int = bounded(0, at_least=0, below=2**63)  # torch.manual_seed takes 64 bits
    lr: float = bounded(0.01, above=0)
    warmup_steps: int | float = bounded(50, at_least=0)  # steps, or a fraction of train.steps in (0, 1)
    weight_decay: float = bounded(0.1, at_least=0)
    beta1: float = bounded(0.9, at_least=0, below=1)
    beta2: float = bounded(0.95, at_least=0, below=1)
    eps: float = bounded(1e-8, above=0)  # 0 divides by zero where a gradient's second moment is 0
    grad_clip: float = bounded(1.0, at_least=0)  # 0: no clipping
    batch_size: int = bounded(16, at_least=1)  # global batch in sequences
    # sequences per rank per forward/backward; auto: derived from the global batch, the number of
    # ranks and the device's memory when the run starts (see train.sizing.settle_micro_batch)
    micro_batch_size: int | str = bounded("auto", at_least=1)
    # [[from_step, sequences], ...]
    batch_schedule: list[list[int]] | None = bounded(None, at_least=0)
    # bf16 autocast, fp32, or auto: bf16 where the device runs bf16 matmuls about as fast as fp32
    precision: str = one_of("auto", "bf16", "fp32")
    device: str = "auto"
    compile: bool = False
    optimizer_impl: str = one_of("fused", "foreach", "for-loop")
    log_every: int = bounded(10, at_least=1)
    val_every: int = bounded(100, at_least=1)
    # Downstream tasks scored on the model in memory during the run (`xmodel2 eval` names, e.g.
    # [arc_easy, hellaswag]), every eval_every steps (0: at each validation) and at the end, on the
    # first eval_limit items of each (null: all); logged as eval/<task> accuracies.
    eval_tasks: list[str] = field(default_factory=list)
    eval_every: int = bounded(0, at_least=0)
    eval_limit: int | None = bounded(200, at_least=1)


@dataclass
class ParallelSection:
    """How ranks share the work under torchrun; a plain single process trains the model as is."""

    # ddp (replicated weights) or fsdp (FSDP2: weights, grads, optimizer sharded)
    strategy: str = one_of("ddp", "fsdp", "none")
    activation_checkpointing: bool = False  # recompute each block in backward (less memory)


@dataclass
class CheckpointSection:
    every: int = bounded(200, at_least=1)
    keep: int = bounded(3, at_least=0)  # newest checkpoints kept (0 keeps all)


@dataclass
class FinishSection:
    sample_prompt: str = "The history of"
    sample_tokens: int = bounded(48, at_least=0)
    sample_temperature: float = bounded(0.0, at_least=0)  # 0: greedy
    sample_top_k: int | None = bounded(None, at_least=1)
    perplexity_sequences: int = bounded(64, at_least=1)


@dataclass
class RunConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "nano"})
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    stages: list[StageSection] = field(default_factory=list)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    finish: FinishSection = field(default_factory=FinishSection)
    base_dir: str = "."  # folder that relative input paths are resolved against

    def to_dict(self) -> dict:
        return to_plain(self)

    def stage_steps(self) -> list[int]:
        """Steps of each stage, adding up to train.steps (fractions rounded as `split_steps` says)."""
        try:
            return split_steps(self.train.steps, [stage.steps for stage in self.stages],
                               [stage.name for stage in self.stages])
        except StageSplitError as exc:
            raise UserError(str(exc)) from None

    def warmup_steps(self) -> int:
        return length_steps(self.train.warmup_steps, self.train.steps)

    def resolve_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


def model_config(run: RunConfig, vocab_size: int) -> ModelConfig:
    """The model section: `preset` plus any ModelConfig field (and a `mup` mapping)."""
    section = dict(run.model)
    name = section.pop("preset", None)
    section.setdefault("vocab_size", vocab_size)
    mup = section.pop("mup", None) or {}
    reject_unknown_keys(section, ModelConfig, "model")
    reject_unknown_keys(mup, MupConfig, "model.mup")
    if name is not None:
        return preset(name, mup=mup, **section)
    return ModelConfig(**section, mup=MupConfig(**mup))


def validate(run: RunConfig) -> None:
    names = set(run.data.sources)
    for which in ("validation", "test"):
        source = getattr(run.data, which)
        if source is not None and source not in names:
            raise UserError(f"data.{which}: unknown source {source!r}")
    if not run.stages:
        raise UserError("stages: at least one stage is needed")
    for index, stage in enumerate(run.stages):
        for source in stage.mixture:
            if source not in names:
                raise UserError(f"stages.{index}.mixture: unknown source {source!r}; "
                                f"sources are {', '.join(sorted(names))}")
            if run.data.sources[source].held_out:
                raise UserError(f"stages.{index}.mixture: {source!r} is held out (validation/test) "
                                "and may not enter a training mixture")
        _check_mixture(index, stage.mixture)
    _check_batch_schedule(run.train.batch_schedule)
    _check_lengths(run)
    micro = run.train.micro_batch_size
    if isinstance(micro, str) and micro != "auto":
        raise UserError(f"train.micro_batch_size: must be an integer >= 1 or auto, got {micro!r}")


def _check_lengths(run: RunConfig) -> None:
    if not is_length(run.train.warmup_steps):
        raise UserError(f"train.warmup_steps: must be a whole number of steps or a fraction of "
                        f"train.steps in (0, 1), got {run.train.warmup_steps}")
    run.stage_steps()
    for index, stage in enumerate(run.stages):
        decay = stage.decay
        if decay is not None and decay.half_life is not None and decay.halvings is not None:
            raise UserError(f"stages.{index}.decay: give half_life (steps) or halvings, not both "
                            f"(half_life={decay.half_life:g}, halvings={decay.halvings:g}); set the "
                            "other to null to override one")


def settle_lengths(run: RunConfig) -> RunConfig:
    """A copy of `run` with every length in steps: stage fractions, a warmup fraction and
    `halvings` are settled against train.steps once, so the run folder records the steps the run
    used and code that edits a run config reads plain step counts."""
    settled = copy.deepcopy(run)
    settled.train.warmup_steps = run.warmup_steps()
    for stage, steps in zip(settled.stages, run.stage_steps()):
        stage.steps = steps
        if stage.decay is not None:
            stage.decay.half_life = stage.decay.half_life_steps(steps)
            stage.decay.halvings = None
    return settled


def _check_mixture(index: int, mixture: dict[str, float]) -> None:
    """Amounts <= 1 are shares of the stage's tokens: when every amount is one, they must add up to 1."""
    if not any(amount > 0 for amount in mixture.values()):
        raise UserError(f"stages.{index}.mixture: needs at least one source with a positive amount")
    shares = [amount for amount in mixture.values() if amount <= 1]
    if len(shares) == len(mixture) and abs(sum(shares) - 1.0) > 1e-6:
        raise UserError(f"stages.{index}.mixture: shares add up to {sum(shares):.4f}, not 1")


def _check_batch_schedule(schedule: list[list[int]] | None) -> None:
    if not schedule:
        return
    for index, entry in enumerate(schedule):
        if len(entry) != 2:
            raise UserError(f"train.batch_schedule.{index}: must be [from_step, sequences], got {entry}")
    try:
        BatchSchedule(tuple((step, size) for step, size in schedule))
    except ValueError as exc:
        raise UserError(f"train.batch_schedule: {exc}") from None


def load_run_config(path: str | Path | None, overrides: list[str],
                    fragments: list[str | Path] = ()) -> RunConfig:
    """Read a run config (the embedded default when `path` is None), deep-merge config fragments
    (e.g. the wind tunnel's best_config.yaml) into it, then apply command-line overrides."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    data, lines = read_yaml(path)
    for fragment in fragments:
        extra, _ = read_yaml(fragment)
        data = deep_merge(data, extra)
        lines = {k: v for k, v in lines.items() if k not in _dotted_keys(extra)}
    data = apply_overrides(data, overrides)
    data.setdefault("base_dir", str(_base_dir_for(path)))
    blame = override_texts(overrides)  # errors in overridden values are the override's, not the file's
    run = load_sections(RunConfig, data, lines=lines, source=str(path), overrides=blame)
    try:
        validate(run)
    except UserError as exc:
        raise _blamed(exc, blame) from None
    return settle_lengths(run)


def _blamed(error: UserError, overrides: dict[str, str]) -> UserError:
    """`error` (whose message starts with the dotted key it is about) prefixed by the override
    that set that key, if one did."""
    key = str(error).split(":", 1)[0].split(" ", 1)[0].split("=", 1)[0]
    matches = [k for k in overrides if key == k or key.startswith(k + ".") or k.startswith(key + ".")]
    if not matches:
        return error
    return UserError(f"{' '.join(overrides[k] for k in sorted(matches))}: {error}")


def deep_merge(base: dict, extra: dict) -> dict:
    """`extra` wins; mappings merge key by key, everything else is replaced."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _dotted_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        keys.add(prefix + str(key))
        if isinstance(value, dict):
            keys |= _dotted_keys(value, f"{prefix}{key}.")
    return keys


def run_config_from_dict(data: dict) -> RunConfig:
    run = load_sections(RunConfig, data)
    validate(run)
    return settle_lengths(run)


def _base_dir_for(path: Path) -> Path:
    # The embedded default names the bundled corpus (corpus/...), shipped inside the package.
    if path.resolve() == DEFAULT_CONFIG.resolve():
        return BUNDLED_ROOT
    return path.resolve().parent
