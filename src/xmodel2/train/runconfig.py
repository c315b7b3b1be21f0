"""The `xmodel2 pretrain` run config: typed sections read from YAML plus command-line overrides.

A run lists its data sources (files prepared into token shards), a tokenizer (given, or trained
on the training sources), a model (a preset plus overrides), optimiser settings, and stages:
usually `stable` (warmup + constant LR) then `decay` (the report's exponential decay), each with
its own mixture stated in tokens (or shares of the stage's tokens) per source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmodel2.configfile import apply_overrides, overridden_keys, load_sections, read_yaml, to_plain
from xmodel2.errors import UserError
from xmodel2.model.config import ModelConfig, MupConfig, preset, reject_unknown_keys

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
    vocab_size: int = 4096
    max_sentences: int = 300000


@dataclass
class DataSection:
    sources: dict[str, SourceSection] = field(default_factory=dict)
    seq_len: int = 256
    validation: str | None = None  # a held-out source used for val_loss
    validation_sequences: int = 64
    test: str | None = None  # a held-out source for the final perplexity
    workers: int = 2


@dataclass
class DecaySection:
    shape: str = "exponential"
    half_life: float = 5000.0  # steps, exponential shape only (the report: 5000)
    floor: float = 0.0


@dataclass
class StageSection:
    name: str
    mixture: dict[str, float]  # source -> tokens (> 1) or share of the stage's tokens (<= 1)
    steps: int | None = None  # None: whatever train.steps leaves after the other stages
    decay: DecaySection | None = None
    max_repeats: float = 4.0


@dataclass
class TrainSection:
    steps: int = 600
    seed: int = 0
    lr: float = 0.01
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    batch_size: int = 16  # global batch in sequences
    micro_batch_size: int = 16
    batch_schedule: list[list[int]] | None = None  # [[from_step, sequences], ...]
    precision: str = "bf16"  # bf16 autocast or fp32
    device: str = "auto"
    compile: bool = False
    optimizer_impl: str = "fused"
    log_every: int = 10
    val_every: int = 100

    def __post_init__(self) -> None:
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be bf16 or fp32, got {self.precision!r}")
        if self.optimizer_impl not in ("foreach", "fused", "for-loop"):
            raise ValueError("optimizer_impl must be foreach, fused or for-loop")
        for name in ("steps", "batch_size", "micro_batch_size", "log_every", "val_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass
class ParallelSection:
    """How ranks share the work under torchrun; a plain single process trains the model as is."""

    strategy: str = "ddp"  # ddp (replicated weights) or fsdp (FSDP2: weights, grads, optimizer sharded)
    activation_checkpointing: bool = False  # recompute each block in backward (less memory)

    def __post_init__(self) -> None:
        if self.strategy not in ("none", "ddp", "fsdp"):
            raise ValueError(f"strategy must be none, ddp or fsdp, got {self.strategy!r}")


@dataclass
class CheckpointSection:
    every: int = 200
    keep: int = 3  # newest checkpoints kept (0 keeps all)


@dataclass
class FinishSection:
    sample_prompt: str = "The history of"
    sample_tokens: int = 48
    sample_temperature: float = 0.0  # 0: greedy
    sample_top_k: int | None = None
    perplexity_sequences: int = 64


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
        """Steps of each stage; the one stage without `steps` takes the remainder."""
        fixed = sum(s.steps for s in self.stages if s.steps is not None)
        open_stages = [s for s in self.stages if s.steps is None]
        if len(open_stages) > 1:
            raise UserError("stages: at most one stage may leave `steps` unset")
        remainder = self.train.steps - fixed
        if open_stages and remainder <= 0:
            raise UserError(f"train.steps={self.train.steps} leaves no steps for stage "
                            f"{open_stages[0].name!r} after the other stages' {fixed}")
        if not open_stages and fixed != self.train.steps:
            raise UserError(f"stages add up to {fixed} steps but train.steps={self.train.steps}")
        return [s.steps if s.steps is not None else remainder for s in self.stages]

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
    run.stage_steps()


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
    for key in overridden_keys(overrides):  # errors in overridden values are not the file's
        lines.pop(key, None)
    data.setdefault("base_dir", str(_base_dir_for(path)))
    run = load_sections(RunConfig, data, lines=lines, source=str(path))
    validate(run)
    return run


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
    return run


def _base_dir_for(path: Path) -> Path:
    # The embedded default names the repository's bundled corpus (data/corpus/...).
    if path.resolve() == DEFAULT_CONFIG.resolve():
        return PACKAGE_CONFIGS.parents[2]
    return path.resolve().parent
