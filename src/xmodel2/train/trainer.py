"""The training loop: AdamW under a WSD schedule, gradient accumulation, callbacks.

This is the one loop that trains anything in xmodel2: `xmodel2 pretrain`, every wind-tunnel
proxy and lr-transfer point, every ratio-search branch and the coordinate check's probes are a
`Trainer` (most built by `engine.build_trainer` from a run config). The loop asks the data plan
(data/plan.py) for each step's micro-batches (a pure function of step, micro-batch and rank, so
resume and any world size read the same data) and `lr_factor(step)` for the schedule. Everything
else that a run does around its steps (validation, in-loop task scores, metrics, checkpoints,
progress, a search's pruning, the coordinate check's statistics) is a `Callback`
(callbacks.py), so the loop is the same whoever runs it.

Under torchrun every rank runs this same loop on its own micro-batches; `loss_module` is then the
DDP- or FSDP-wrapped loss (distributed.py) and gradients are reduced across ranks on each step's
last micro-batch only. A step's loss, trained and logged, is the mean over every target token of
the global batch (see `accumulate_gradients`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from xmodel2.data.plan import DataPlan, MicroBatch
from xmodel2.data.sft_mask import IGNORE_INDEX
from xmodel2.errors import UserError
from xmodel2.model.mup import set_learning_rate
from xmodel2.model.transformer import Transformer
from xmodel2.train.hardware import resolve_precision
from xmodel2.train.distributed import (LossModule, all_reduce_mean, all_reduce_sum, clip_grad_norm,
                                       gradient_sync)


class TrainingDiverged(UserError):
    """The loss (or the gradient norm) became NaN or infinite."""


@dataclass
class LoopSettings:
    total_steps: int
    seq_len: int  # tokens per training sequence, for the count of tokens trained on
    grad_clip: float  # 0: no clipping
    precision: str  # "bf16" or "fp32"
    rank: int = 0  # which share of every global batch this process trains on


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate_loss(model: Transformer, batches: list[torch.Tensor], precision: str,
                  device: torch.device) -> float:
    """Mean next-token loss over held-out (n, seq+1) token blocks."""
    return mean_loss(LossModule(model), batches, precision, device)


@torch.no_grad()
def mean_loss(loss_module: torch.nn.Module, batches: list[torch.Tensor], precision: str,
              device: torch.device) -> float:
    """Mean over all target tokens of a loss module over (n, seq+1) blocks. Distributed, every rank
    evaluates every block (FSDP needs all ranks in each forward), so all get the same value."""
    was_training = loss_module.training
    loss_module.eval()
    total, count = 0.0, 0
    for block in batches:
        block = block.to(device)
        targets = block[:, 1:]
        with autocast_context(precision, device):
            total += loss_module(block[:, :-1], targets, normalizer=1.0).item()  # the sum
        count += int((targets != IGNORE_INDEX).sum())
    loss_module.train(was_training)
    return total / max(1, count)


def accumulate_gradients(loss_module: torch.nn.Module, micro_batches: list[MicroBatch], world_size: int,
                         precision: str, device: torch.device) -> float:
    """Forward and backward over this rank's micro-batches of one step; returns the step's loss.

    The step's loss is the mean over every target token of the global batch. So each micro-batch
    adds its summed loss divided by the global count of target tokens, never its own mean: once
    masks make micro-batches unequal, a mean of means would weigh a token of a sparse micro-batch
    above one of a full micro-batch, and the result would change with the micro-batch size and the
    number of ranks. DDP and FSDP average gradients over ranks, so each rank divides by its
    1/world_size share of the global count, and the average comes out as the global sum / count.

    The global count is the ranks' own counts summed by one all-reduce of one number per step. The
    plan is deterministic, so every rank could count all ranks' targets itself, but each would then
    read the whole global batch, world_size times its own share, while one small collective costs
    next to nothing beside a step.
    """
    local_targets = sum(batch.target_tokens for batch in micro_batches)
    normalizer = max(1.0, all_reduce_sum(float(local_targets), device)) / world_size
    total = torch.zeros((), dtype=torch.float64, device=device)
    for index, batch in enumerate(micro_batches):
        with gradient_sync(loss_module, enabled=index == len(micro_batches) - 1):
            with autocast_context(precision, device):
                loss = loss_module(batch.inputs.to(device, non_blocking=True),
                                   batch.targets.to(device, non_blocking=True), normalizer=normalizer)
            loss.backward()
        total += loss.detach()
    # The ranks' shares average to the global mean; every rank gets it, so all stop together on a NaN.
    return all_reduce_mean(total.item(), device)


@dataclass
class StepResult:
    """What one optimizer step did; callbacks add their own keys to `record` (what gets logged)."""

    step: int  # steps done after this one (1 after the first step)
    loss: float  # mean over the global batch's target tokens
    grad_norm: float  # before clipping
    lr: float  # the peak-relative LR the step used, times the base LR
    tokens: int  # tokens the run has fed in, this step included
    seconds: float  # the step's own time (forward, backward, optimizer)
    record: dict


class Callback:
    """Hooks around the loop; every method is optional. A callback stops the run early by
    setting `trainer.stop_requested` (the step that set it is complete)."""

    def on_train_start(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", result: StepResult) -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None: ...


class Trainer:
    def __init__(self, model: Transformer, optimizer: torch.optim.Optimizer, settings: LoopSettings,
                 data: DataPlan, lr_factor: Callable[[int], float], base_lr: float, device: torch.device,
                 loss_module: torch.nn.Module | None = None, callbacks: Sequence[Callback] = (),
                 run_config: dict | None = None) -> None:
        self.model = model
        self.loss_module = loss_module or LossModule(model)
        self.optimizer = optimizer
        self.settings = settings
        self.data = data
        self.lr_factor = lr_factor
        self.base_lr = base_lr
        self.device = device
        self.callbacks = list(callbacks)
        self.run_config = run_config or {}  # the resolved run config, saved with checkpoints
        self.step = 0  # optimizer steps done
        self.tokens = 0
        self.stop_requested = False

    def stage_of(self, step: int) -> str:
        return self.data.stage_at(step).name

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.lr_factor(step)

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimizer step; returns (mean loss over the global batch's target tokens, grad norm
        before clipping). Raises TrainingDiverged, without applying the step, on a NaN/inf."""
        set_learning_rate(self.optimizer, self.lr_at(step))
        total = accumulate_gradients(self.loss_module, self.data.rank_micro_batches(step, self.settings.rank),
                                     self.data.world_size, self.settings.precision, self.device)
        if not math.isfinite(total):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"loss is {total} at step {step}; stopped without applying it")
        clip = self.settings.grad_clip if self.settings.grad_clip > 0 else math.inf
        grad_norm = clip_grad_norm(self.model.parameters(), clip)
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"gradient norm is {grad_norm} at step {step}; stopped without applying it")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens += self.step_tokens(step)
        return total, grad_norm

    def step_tokens(self, step: int) -> int:
        """Tokens the global batch of `step` feeds in, masked targets included."""
        return self.data.batches.size(step) * self.settings.seq_len

    def validation_loss(self, blocks: list[torch.Tensor]) -> float:
        return mean_loss(self.loss_module, blocks, self.settings.precision, self.device)

    def run(self) -> None:
        """Train from `self.step` to `settings.total_steps` (or until a callback asks to stop)."""
        self.loss_module.train()
        for callback in self.callbacks:
            callback.on_train_start(self)
        try:
            while self.step < self.settings.total_steps and not self.stop_requested:
                step = self.step
                started = time.perf_counter()
                loss, grad_norm = self.train_step(step)
                seconds = time.perf_counter() - started
                self.step += 1
                result = StepResult(step=self.step, loss=loss, grad_norm=grad_norm, lr=self.lr_at(step),
                                    tokens=self.tokens, seconds=seconds, record={})
                for callback in self.callbacks:
                    callback.on_step_end(self, result)
        finally:
            for callback in self.callbacks:
                callback.on_train_end(self)
