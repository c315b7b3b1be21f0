"""The training loop: AdamW under a WSD schedule, gradient accumulation, validation, checkpoints.

The loop is generic: it asks `batch_for_step(step, micro_index)` for data (a pure function of the
step, so resume and any world size read the same data), `lr_factor(step)` for the schedule, and
reports every logged step to the `MetricsLogger`. Everything that writes files happens here in
one place, after the optimizer step, so a kill at any moment loses at most the steps since the
last checkpoint and never corrupts one.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from xmodel2.errors import UserError
from xmodel2.model.mup import set_learning_rate
from xmodel2.model.transformer import Transformer
from xmodel2.train.checkpoint import TrainingState, save_checkpoint
from xmodel2.train.loss import next_token_loss


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class LoopSettings:
    total_steps: int
    accumulation: Callable[[int], int]  # micro-batches at a step
    tokens_per_micro_batch: int
    grad_clip: float
    precision: str  # "bf16" or "fp32"
    log_every: int
    val_every: int
    checkpoint_every: int
    checkpoint_keep: int
    flops_per_token: float
    peak_flops: float


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_loss(model: Transformer, batches: list[torch.Tensor], precision: str,
                  device: torch.device) -> float:
    """Mean next-token loss over held-out (n, seq+1) token blocks."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for block in batches:
        block = block.to(device)
        with autocast_context(precision, device):
            loss = next_token_loss(model, block[:, :-1], block[:, 1:])
        n = block[:, 1:].numel()
        total += loss.item() * n
        count += n
    model.train(was_training)
    return total / max(1, count)


class Trainer:
    def __init__(self, model: Transformer, optimizer: torch.optim.Optimizer, settings: LoopSettings,
                 batch_for_step: Callable[[int, int], torch.Tensor], lr_factor: Callable[[int], float],
                 base_lr: float, out_dir: Path, run_config: dict, logger, device: torch.device,
                 validation: list[torch.Tensor] | None = None, tokenizer_dir: Path | None = None,
                 compiled_model: torch.nn.Module | None = None, stage_of: Callable[[int], str] = lambda s: "") -> None:
        self.model = model
        self.forward_model = compiled_model or model
        self.optimizer = optimizer
        self.settings = settings
        self.batch_for_step = batch_for_step
        self.lr_factor = lr_factor
        self.base_lr = base_lr
        self.out_dir = Path(out_dir)
        self.run_config = run_config
        self.logger = logger
        self.device = device
        self.validation = validation or []
        self.tokenizer_dir = tokenizer_dir
        self.stage_of = stage_of
        self.step = 0
        self.tokens = 0

    def _loss(self, block: torch.Tensor) -> torch.Tensor:
        block = block.to(self.device, non_blocking=True)
        with autocast_context(self.settings.precision, self.device):
            return next_token_loss(self.forward_model, block[:, :-1], block[:, 1:])

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimizer step; returns (mean loss, grad norm before clipping)."""
        accumulation = self.settings.accumulation(step)
        set_learning_rate(self.optimizer, self.base_lr * self.lr_factor(step))
        total = 0.0
        for micro in range(accumulation):
            loss = self._loss(self.batch_for_step(step, micro)) / accumulation
            loss.backward()
            total += loss.item()
        if not math.isfinite(total):
            raise TrainingDiverged(
                f"loss is {total} at step {step}; stopped without applying it. The last good "
                f"checkpoint is the newest under {self.out_dir / 'checkpoints'}")
        clip = self.settings.grad_clip if self.settings.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip).item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens += accumulation * self.settings.tokens_per_micro_batch
        return total, grad_norm

    def checkpoint(self) -> Path:
        state = TrainingState(step=self.step, tokens=self.tokens, run_config=self.run_config,
                              extra={"stage": self.stage_of(max(0, self.step - 1))})
        return save_checkpoint(self.out_dir, self.model, self.optimizer, state, self.tokenizer_dir,
                               keep=self.settings.checkpoint_keep)

    def validate(self) -> float:
        return evaluate_loss(self.forward_model, self.validation, self.settings.precision, self.device)

    def run(self, progress=None) -> None:
        s = self.settings
        self.model.train()
        # Throughput counts training time only, not validation or checkpoint writing.
        window_tokens, window_seconds = 0, 0.0
        while self.step < s.total_steps:
            step = self.step
            started = time.perf_counter()
            loss, grad_norm = self.train_step(step)
            window_seconds += time.perf_counter() - started
            self.step += 1
            window_tokens += s.accumulation(step) * s.tokens_per_micro_batch
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
