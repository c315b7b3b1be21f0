"""μP coordinate check: do activations and their updates keep their size as the model widens?

Models of several widths (fixed `dim_model_base`, fixed head_dim, so heads scale with width) or,
in the depth sweep, several depths at one width, take a few AdamW steps from our
`build_optimizer` (so μP's per-group LRs are the real ones) at a deliberately large LR on one fixed
batch, with no clipping, for several seeds, trained by the same `Trainer` as every run (its
statistics gathered by a callback). Forward hooks record, for each module output x_t at
step t, the mean |x_t| and the mean |x_t - x_0|; the seed means are fitted on log-log axes
against width (or depth).

The rule, applied to every arm alike:

* hidden modules: the embedding output after its multiplier, each block's q/k/v projections,
  attention output (o_proj, before the residual multiplier), MLP output (down_proj, likewise),
  residual stream after the block, and the final norm. Their mean |x_t| at every step t = 0..T
  and their mean |x_t - x_0| at every step t = 1..T must have spread (max/min over the sweep)
  <= 1.5 and |log-log slope| <= 0.15.
* logits: under μP they shrink like 1/sqrt(width) at init, so only the last step T is checked,
  for both statistics, by the same thresholds (they must have settled by then).

The subject (μP) must pass every check and each negative control (`arms.py`) must fail at least
one; a control that passes makes the whole check inconclusive.

The depth sweep applies the same rule to the first and last blocks. MiniCPM's depth rule (branch
multiplier scale_depth/sqrt(L), hidden LR not depth-scaled) keeps the init flat but not the Adam
updates: the L branches move together, so the last block's residual update grows with depth. A
depth-sweep FAIL is therefore a statement about that recipe, not a bug in the check.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from xmodel2.data.plan import DataPlan, RepeatedBatch
from xmodel2.errors import UserError
from xmodel2.model.config import ModelConfig, MupConfig
from xmodel2.model.folder import build_model
from xmodel2.model.mup import build_optimizer
from xmodel2.model.transformer import Transformer
from xmodel2.train.schedule import BatchSchedule
from xmodel2.train.trainer import Callback, LoopSettings, StepResult, Trainer, TrainingDiverged
from xmodel2.windtunnel.arms import DEPTH_ARMS, WIDTH_ARMS, Arm
from xmodel2.windtunnel.textbatch import FixedBatch, fixed_batch

STATISTICS = ("act", "update")  # mean |x_t| and mean |x_t - x_0|
MAX_SPREAD = 1.5
MAX_ABS_SLOPE = 0.15


@dataclass
class CoordCheckSettings:
    axis: str = "width"                        # "width" or "depth"
    values: tuple[int, ...] = (64, 128, 256, 512, 1024)
    width: int = 256                           # fixed width of the depth sweep
    layers: int = 2                            # fixed depth of the width sweep
    head_dim: int = 32
    ffn_ratio: float = 2.5                     # intermediate / hidden, as in the presets
    dim_model_base: int = 64
    vocab_size: int = 512
    batch_size: int = 8
    seq_len: int = 32
    steps: int = 4
    seeds: int = 3
    lr: float = 0.01
    weight_decay: float = 0.1
    text: Path | None = None

    def validate(self) -> None:
        if self.axis not in ("width", "depth"):
            raise UserError(f"axis must be width or depth, got {self.axis!r}")
        if len(self.values) < 2 or len(set(self.values)) != len(self.values):
            raise UserError(f"--{self.axis}s needs at least two different values, got {list(self.values)}")
        for name in ("steps", "seeds", "batch_size", "seq_len", "head_dim", "dim_model_base"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise UserError("--lr must be positive and --weight-decay non-negative")
        widths = self.values if self.axis == "width" else (self.width,)
        for width in widths:
            if width % self.head_dim:
                raise UserError(f"width {width} is not a multiple of head_dim {self.head_dim}")
        if self.axis == "depth" and min(self.values) < 2:
            raise UserError("--depths must all be at least 2 (the first and last blocks are tracked)")

    @property
    def arms(self) -> tuple[Arm, ...]:
        return WIDTH_ARMS if self.axis == "width" else DEPTH_ARMS

    def model_config(self, value: int, arm: Arm) -> ModelConfig:
        width, depth = (value, self.layers) if self.axis == "width" else (self.width, value)
        heads = width // self.head_dim
        return ModelConfig(
            vocab_size=self.vocab_size, hidden_size=width,
            intermediate_size=int(round(self.ffn_ratio * width)), num_layers=depth,
            num_heads=heads, num_kv_heads=heads, max_position_embeddings=self.seq_len,
            mup=MupConfig(enabled=arm.mup_enabled, dim_model_base=self.dim_model_base))


# ---- recording ------------------------------------------------------------------------------------

class Recorder:
    """Forward hooks that keep each tracked module's latest output (and its first, x_0)."""

    def __init__(self, model: Transformer, blocks: dict[int, str]) -> None:
        self.names: list[str] = []
        self.latest: dict[str, torch.Tensor] = {}
        self.first: dict[str, torch.Tensor] = {}
        self._handles = []
        body = model.model
        # The first block's input is exactly the embedding output after its multiplier.
        self._handles.append(body.layers[0].register_forward_pre_hook(
            lambda _module, args: self._keep("embedding", args[0])))
        self.names.append("embedding")
        for index, label in blocks.items():
            layer = body.layers[index]
            for kind, module in (("q", layer.self_attn.q_proj), ("k", layer.self_attn.k_proj),
                                 ("v", layer.self_attn.v_proj), ("attn_out", layer.self_attn),
                                 ("mlp_out", layer.mlp), ("resid", layer)):
                self._watch(module, f"{label}.{kind}")
        self._watch(body.norm, "final_norm")
        # Training asks the model for its final hidden states (the loss makes logits in chunks):
        # the logits are then made from them here, as the model would.
        self.names.append("logits")
        self._handles.append(model.register_forward_hook(
            lambda module, _args, kwargs, output: self._keep(
                "logits", module.logits(output.detach()) if kwargs.get("output_hidden") else output),
            with_kwargs=True))

    def _watch(self, module: torch.nn.Module, name: str) -> None:
        self.names.append(name)
        self._handles.append(module.register_forward_hook(
            lambda _module, _args, output: self._keep(name, output)))

    def _keep(self, name: str, x: torch.Tensor) -> None:
        self.latest[name] = x.detach().clone()

    def stats(self) -> np.ndarray:
        """(modules, 2): mean |x_t| and mean |x_t - x_0|; the first call defines x_0."""
        out = np.empty((len(self.names), 2))
        for i, name in enumerate(self.names):
            x = self.latest[name]
            x0 = self.first.setdefault(name, x)
            out[i] = (x.abs().mean().item(), (x - x0).abs().mean().item())
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def block_labels(num_layers: int, axis: str) -> dict[int, str]:
    """Blocks to track: all of them in a width sweep; first and last in a depth sweep, so
    module names are the same at every depth."""
    if axis == "depth":
        return {0: "first", num_layers - 1: "last"}
    return {i: f"b{i}" for i in range(num_layers)}


@dataclass(frozen=True)
class _ProbeStage:
    name: str
    start: int
    end: int
    dataset: RepeatedBatch


class _Statistics(Callback):
    """The recorder's statistics of each training step's forward (x_t at the weights after t
    updates), and after the last step one more forward for x_T."""

    def __init__(self, recorder: Recorder, batch: FixedBatch, steps: int) -> None:
        self.recorder, self.batch = recorder, batch
        self.stats = np.full((len(recorder.names), steps + 1, 2), np.nan)
        self.losses = [math.nan] * (steps + 1)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        self.stats[:, result.step - 1] = self.recorder.stats()
        self.losses[result.step - 1] = result.loss

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.step < trainer.settings.total_steps:
            return  # diverged: the remaining steps stay NaN, which fails any fit
        with torch.no_grad():
            logits = trainer.model(self.batch.inputs)
        self.stats[:, -1] = self.recorder.stats()
        self.losses[-1] = F.cross_entropy(logits.flatten(0, 1), self.batch.targets.flatten()).item()


def probe(settings: CoordCheckSettings, value: int, arm: Arm, seed: int,
          batch: FixedBatch) -> tuple[list[str], np.ndarray, list[float]]:
    """Train one model for `steps` steps on the training engine, at a constant LR on one fixed
    batch, in fp32 and without clipping.

    Returns the module names, their stats (modules, steps+1, 2) and the loss at each step.
    """
    config = settings.model_config(value, arm)
    model = build_model(config, seed=seed)
    if arm.edit_model is not None:
        arm.edit_model(model, config)
    optimizer = build_optimizer(model, config, lr=settings.lr, weight_decay=settings.weight_decay)
    if arm.edit_optimizer is not None:
        arm.edit_optimizer(optimizer, settings.lr)
    recorder = Recorder(model, block_labels(config.num_layers, settings.axis))
    statistics = _Statistics(recorder, batch, settings.steps)
    rows = len(batch.inputs)
    plan = DataPlan([_ProbeStage("probe", 0, settings.steps, RepeatedBatch(batch.inputs, batch.targets))],
                    BatchSchedule.constant(rows), micro_batch_size=rows)
    trainer = Trainer(model, optimizer, LoopSettings(total_steps=settings.steps, seq_len=settings.seq_len,
                                                     grad_clip=0.0, precision="fp32"),
                      plan, lambda step: 1.0, settings.lr, torch.device("cpu"), callbacks=[statistics])
    try:
        trainer.run()
    except TrainingDiverged:
        pass  # what was recorded stands; the rest is NaN
    finally:
        recorder.close()
    return recorder.names, statistics.stats, statistics.losses


# ---- fitting and the verdict ---------------------------------------------------------------------

def fit(values: list[int], means: np.ndarray) -> tuple[float | None, float | None]:
    """Log-log slope and max/min spread of positive, finite means; (None, None) otherwise."""
    if not np.all(np.isfinite(means)) or np.any(means <= 0):
        return None, None
    slope = float(np.polyfit(np.log(values), np.log(means), 1)[0])
    return slope, float(means.max() / means.min())


def is_checked(module: str, statistic: str, step: int, steps: int) -> bool:
    if module == "logits":
        return step == steps
    return not (statistic == "update" and step == 0)


def passes(slope: float | None, spread: float | None) -> bool:
    return slope is not None and abs(slope) <= MAX_ABS_SLOPE and spread <= MAX_SPREAD


def summarize_arm(values: list[int], names: list[str], means: np.ndarray, steps: int) -> dict:
    """Per module and statistic, one entry per step: seed means, slope, spread, verdict."""
    modules: dict[str, dict] = {}
    failures: list[dict] = []
    for m, module in enumerate(names):
        modules[module] = {}
        for s, statistic in enumerate(STATISTICS):
            entries = []
            for step in range(steps + 1):
                column = means[:, m, step, s]
                slope, spread = fit(values, column)
                checked = is_checked(module, statistic, step, steps)
                entry = {"step": step, "mean": [_finite(v) for v in column],
                         "slope": slope, "spread": spread, "checked": checked,
                         "passed": passes(slope, spread) if checked else None}
                entries.append(entry)
                if checked and not entry["passed"]:
                    failures.append({"module": module, "statistic": statistic, "step": step,
                                     "slope": slope, "spread": spread})
            modules[module][statistic] = entries
    return {"passed": not failures, "failures": failures, "modules": modules}


def verdict(arms: dict[str, dict]) -> str:
    subject = [a for a in arms.values() if not a["control"]]
    controls = [a for a in arms.values() if a["control"]]
    if not all(a["passed"] for a in subject):
        return "fail"
    if any(a["passed"] for a in controls):
        return "inconclusive"
    return "pass"


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


# ---- the whole check -----------------------------------------------------------------------------

def run_coord_check(settings: CoordCheckSettings,
                    progress: Callable[[str], None] | None = None) -> dict:
    """Run every arm at every sweep value and seed; return the JSON-ready result."""
    settings.validate()
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    batch = fixed_batch(settings.batch_size, settings.seq_len, settings.vocab_size, settings.text)
    values = list(settings.values)
    raw: dict[str, list[list[np.ndarray]]] = {arm.name: [] for arm in settings.arms}
    losses: dict[str, list[list[list[float]]]] = {arm.name: [] for arm in settings.arms}
    names: list[str] = []
    for value in values:
        started = time.perf_counter()
        for arm in settings.arms:
            runs = [probe(settings, value, arm, seed, batch) for seed in range(settings.seeds)]
            names = runs[0][0]
            raw[arm.name].append([stats for _, stats, _ in runs])
            losses[arm.name].append([loss for _, _, loss in runs])
        say(f"coord-check: {settings.axis} {value}: {len(settings.arms)} arms x "
            f"{settings.seeds} seeds in {time.perf_counter() - started:.1f} s")
    arms = {}
    for arm in settings.arms:
        # (values, seeds, modules, steps+1, 2) -> mean over seeds
        means = np.mean(np.array(raw[arm.name]), axis=1)
        summary = summarize_arm(values, names, means, settings.steps)
        # Loss per sweep value and step, mean over seeds: shows whether any model diverged.
        loss = np.mean(np.array(losses[arm.name]), axis=1)
        arms[arm.name] = {"description": arm.description, "control": arm.control,
                          "expected_symptom": arm.symptom,
                          "loss": [[_finite(v) for v in row] for row in loss], **summary}
    return {
        "axis": settings.axis,
        "values": values,
        "modules": names,
        "settings": _settings_dict(settings),
        "batch_source": batch.source,
        "criteria": {"max_spread": MAX_SPREAD, "max_abs_slope": MAX_ABS_SLOPE,
                     "hidden_modules": "every step for mean |x_t|, steps 1..T for mean |x_t - x_0|",
                     "logits": "last step only, both statistics"},
        "arms": arms,
        "verdict": verdict(arms),
    }


def _settings_dict(settings: CoordCheckSettings) -> dict:
    out = {k: v for k, v in vars(settings).items() if k != "text"}
    out["values"] = list(settings.values)
    out["text"] = str(settings.text) if settings.text else None
    out["optimizer"] = "AdamW from xmodel2.model.mup.build_optimizer, no clipping"
    return out


def write_outputs(result: dict, out_dir: Path) -> list[Path]:
    """coord_check.json, coord_check.txt (the table) and one PNG per arm, each written atomically."""
    from xmodel2.fileio import atomic_write_json, atomic_write_text
    from xmodel2.windtunnel.coord_plot import plot_arm
    from xmodel2.windtunnel.coord_report import format_table

    out_dir = Path(out_dir)
    written = [out_dir / "coord_check.json", out_dir / "coord_check.txt"]
    atomic_write_json(written[0], result)
    atomic_write_text(written[1], format_table(result) + "\n")
    for name in result["arms"]:
        path = out_dir / f"coord_check_{name}.png"
        plot_arm(result, name, path)
        written.append(path)
    return written
