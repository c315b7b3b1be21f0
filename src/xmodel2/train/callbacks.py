"""What a run does around its steps, as `Trainer` callbacks: validation, in-loop task scores,
metrics, checkpoints and progress.

Callbacks run in the order given after every step, each seeing the step's `StepResult`; the
ones that measure (validation, task scores) add keys to `result.record` before `LogMetrics`
writes it, so one logged line holds everything measured at that step. Files are written only
after the optimizer step, so a kill at any moment loses at most the steps since the last
checkpoint and never corrupts one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from xmodel2.train.checkpoint import TrainingState, save_checkpoint
from xmodel2.train.dist_checkpoint import save_sharded_checkpoint
from xmodel2.train.distributed import is_distributed
from xmodel2.train.metrics import MetricsLogger, Progress
from xmodel2.train.trainer import Callback, StepResult, Trainer


def due(step: int, every: int, total: int) -> bool:
    """Whether something done every `every` steps (and at the end) is due after `step` steps."""
    return step % every == 0 or step == total


class Validate(Callback):
    """Held-out loss (`val_loss`) every `every` steps and at the end; at step 0 too when
    `at_start` (the curve's first point). `last` is the newest value."""

    def __init__(self, blocks: list[torch.Tensor], every: int, at_start: bool = False) -> None:
        self.blocks, self.every, self.at_start = blocks, every, at_start
        self.first: float | None = None
        self.last: float | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        if self.at_start and trainer.step == 0 and self.blocks:
            self.first = self.last = trainer.validation_loss(self.blocks)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if self.blocks and due(result.step, self.every, trainer.settings.total_steps):
            self.last = result.record["val_loss"] = trainer.validation_loss(self.blocks)


class ScoreTasks(Callback):
    """Downstream task accuracies on the model in memory every `every` steps and at the end, as
    `eval/<task>` keys of the step's record. `score(model) -> {task: accuracy}` is the evaluation
    function `xmodel2 eval` and the ratio search use (eval.runner.task_accuracies)."""

    def __init__(self, score: Callable[[torch.nn.Module], dict[str, float]], every: int) -> None:
        self.score, self.every = score, every

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if due(result.step, self.every, trainer.settings.total_steps):
            for task, accuracy in self.score(trainer.model).items():
                result.record[f"eval/{task}"] = accuracy


class LogMetrics(Callback):
    """A line of `metrics.jsonl` (and TensorBoard scalars) every `every` steps, after the first
    step, at the end, and at any step another callback measured something at. Throughput and MFU
    count training time only, not validation or checkpoint writing."""

    def __init__(self, logger: MetricsLogger, every: int, flops_per_token: float, peak_flops: float,
                 progress: Progress | None = None) -> None:
        self.logger, self.every, self.progress = logger, every, progress
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.window_tokens, self.window_seconds = 0, 0.0

    def on_train_start(self, trainer: Trainer) -> None:
        """A fresh run's curve starts at step 0 with the validation loss at initialisation."""
        for callback in trainer.callbacks:
            if isinstance(callback, Validate) and callback.first is not None and trainer.step == 0:
                self.logger.log({"step": 0, "tokens": 0, "loss": callback.first, "lr": 0.0,
                                 "val_loss": callback.first, "stage": trainer.stage_of(0)})

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        self.window_tokens += trainer.step_tokens(result.step - 1)
        self.window_seconds += result.seconds
        record = None
        if due(result.step, self.every, trainer.settings.total_steps) or result.step == 1:
            tokens_per_s = self.window_tokens / self.window_seconds if self.window_seconds > 0 else 0.0
            record = {**self._basics(trainer, result), "grad_norm": result.grad_norm,
                      "tokens_per_s": tokens_per_s,
                      "mfu": tokens_per_s * self.flops_per_token / self.peak_flops if self.peak_flops else 0.0,
                      "lr_groups": {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}}
            self.window_tokens, self.window_seconds = 0, 0.0
        if result.record:
            record = {**(record or self._basics(trainer, result)), **result.record}
        if record is not None:
            self.logger.log(record)
        if self.progress is not None:
            self.progress.update(logged=record is not None)

    @staticmethod
    def _basics(trainer: Trainer, result: StepResult) -> dict:
        return {"step": result.step, "tokens": result.tokens, "loss": result.loss, "lr": result.lr,
                "stage": trainer.stage_of(result.step - 1)}

    def on_train_end(self, trainer: Trainer) -> None:
        if self.progress is not None:
            self.progress.close()
        self.logger.close()


class SaveCheckpoints(Callback):
    """A complete checkpoint every `every` steps and at the end, keeping the newest `keep`
    (0: all); under torchrun each rank writes its optimizer shard into the same folder."""

    def __init__(self, out_dir: Path, every: int, keep: int, tokenizer_dir: Path | None) -> None:
        self.out_dir, self.every, self.keep, self.tokenizer_dir = Path(out_dir), every, keep, tokenizer_dir

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if due(result.step, self.every, trainer.settings.total_steps):
            self.save(trainer)

    def save(self, trainer: Trainer) -> Path:
        state = TrainingState(step=trainer.step, tokens=trainer.tokens, run_config=trainer.run_config,
                              extra={"stage": trainer.stage_of(max(0, trainer.step - 1)),
                                     "world_size": trainer.data.world_size})
        save = save_sharded_checkpoint if is_distributed() else save_checkpoint
        return save(self.out_dir, trainer.model, trainer.optimizer, state, self.tokenizer_dir, keep=self.keep)
