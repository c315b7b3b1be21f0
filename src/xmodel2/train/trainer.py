"""The training loop: AdamW under a WSD schedule, gradient accumulation, validation, checkpoints.

The loop is generic: it asks the data plan (data/plan.py) for each step's micro-batches (a pure
function of step, micro-batch and rank, so resume and any world size read the same data),
`lr_factor(step)` for the schedule, and reports every logged step to the `MetricsLogger`. Under
torchrun every rank runs this same loop on its own micro-batches; `loss_module` is then the DDP- or
FSDP-wrapped loss (distributed.py) and gradients are reduced across ranks on each step's last
micro-batch only. A step's loss, trained and logged, is the mean over every target token of the
global batch (see `accumulate_gradients`). Everything that writes files happens here in one place,
after the optimizer step, so a kill at any moment loses at most the steps since the last
checkpoint and never corrupts one.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from xmodel2.data.plan import DataPlan, MicroBatch
from xmodel2.data.sft_mask import IGNORE_INDEX
from xmodel2.errors import UserError
from xmodel2.model.mup import set_learning_rate
from xmodel2.model.transformer import Transformer
from xmodel2.train.checkpoint import TrainingState, save_checkpoint
from xmodel2.train.dist_checkpoint import save_sharded_checkpoint
from xmodel2.train.hardware import resolve_precision
from xmodel2.train.distributed import (LossModule, all_reduce_mean, all_reduce_sum, clip_grad_norm,
                                       gradient_sync, is_distributed)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class LoopSettings:
    total_steps: int
    seq_len: int  # tokens per training sequence, for the count of tokens trained on
    grad_clip: float
    precision: str  # "bf16" or "fp32"
    log_every: int
    val_every: int
    checkpoint_every: int
    checkpoint_keep: int
    flops_per_token: float
    peak_flops: float  # of all ranks together
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


class Trainer:
    def __init__(self, model: Transformer, optimizer: torch.optim.Optimizer, settings: LoopSettings,
                 data: DataPlan, lr_factor: Callable[[int], float],
                 base_lr: float, out_dir: Path, run_config: dict, logger, device: torch.device,
                 validation: list[torch.Tensor] | None = None, tokenizer_dir: Path | None = None,
                 compiled_model: torch.nn.Module | None = None,
                 loss_module: torch.nn.Module | None = None) -> None:
        self.model = model
        self.loss_module = loss_module or LossModule(compiled_model or model)
        self.optimizer = optimizer
        self.settings = settings
        self.data = data
        self.lr_factor = lr_factor
        self.base_lr = base_lr
        self.out_dir = Path(out_dir)
        self.run_config = run_config
        self.logger = logger
        self.device = device
        self.validation = validation or []
        self.tokenizer_dir = tokenizer_dir
        self.step = 0
        self.tokens = 0

    def stage_of(self, step: int) -> str:
        return self.data.stage_at(step).name

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimizer step; returns (mean loss over the global batch's target tokens, grad norm
        before clipping)."""
        set_learning_rate(self.optimizer, self.base_lr * self.lr_factor(step))
        total = accumulate_gradients(self.loss_module, self.data.rank_micro_batches(step, self.settings.rank),
                                     self.data.world_size, self.settings.precision, self.device)
        if not math.isfinite(total):
            raise TrainingDiverged(
                f"loss is {total} at step {step}; stopped without applying it. The last good "
                f"checkpoint is the newest under {self.out_dir / 'checkpoints'}")
        clip = self.settings.grad_clip if self.settings.grad_clip > 0 else math.inf
        grad_norm = clip_grad_norm(self.model.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens += self._step_tokens(step)
        return total, grad_norm

    def _step_tokens(self, step: int) -> int:
        """Tokens the global batch of `step` feeds in, masked targets included."""
        return self.data.batches.size(step) * self.settings.seq_len

    def checkpoint(self) -> Path:
        state = TrainingState(step=self.step, tokens=self.tokens, run_config=self.run_config,
                              extra={"stage": self.stage_of(max(0, self.step - 1)),
                                     "world_size": self.data.world_size})
        save = save_sharded_checkpoint if is_distributed() else save_checkpoint
        return save(self.out_dir, self.model, self.optimizer, state, self.tokenizer_dir,
                    keep=self.settings.checkpoint_keep)

    def validate(self) -> float:
        return mean_loss(self.loss_module, self.validation, self.settings.precision, self.device)

    def run(self, progress=None) -> None:
        s = self.settings
        self.loss_module.train()
        # Throughput counts training time only, not validation or checkpoint writing.
        window_tokens, window_seconds = 0, 0.0
        while self.step < s.total_steps:
            step = self.step
            started = time.perf_counter()
            loss, grad_norm = self.train_step(step)
            window_seconds += time.perf_counter() - started
            self.step += 1
            window_tokens += self._step_tokens(step)
            record = None
            if self.step % s.log_every == 0 or self.step == s.total_steps or step == 0:
                tokens_per_s = window_tokens / window_seconds if window_seconds > 0 else 0.0
                record = {"step": self.step, "tokens": self.tokens, "loss": loss,
                          "lr": self.base_lr * self.lr_factor(step), "grad_norm": grad_norm,
                          "tokens_per_s": tokens_per_s,
                          "mfu": tokens_per_s * s.flops_per_token / s.peak_flops if s.peak_flops else 0.0,
                          "stage": self.stage_of(step),
                          "lr_groups": {g["name"]: g["lr"] for g in self.optimizer.param_groups}}
                window_tokens, window_seconds = 0, 0.0
            if self.validation and (self.step % s.val_every == 0 or self.step == s.total_steps):
                record = record or {"step": self.step, "tokens": self.tokens, "loss": loss,
                                    "lr": self.base_lr * self.lr_factor(step), "stage": self.stage_of(step)}
                record["val_loss"] = self.validate()
            if record is not None:
                self.logger.log(record)
            if progress is not None:
                progress.update(logged=record is not None)
            if self.step % s.checkpoint_every == 0 or self.step == s.total_steps:
                self.checkpoint()
