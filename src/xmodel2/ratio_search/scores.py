"""How a decay branch is scored, on the model in memory: held-out losses and task accuracy.

Accuracy goes through `xmodel2.eval.runner.score_in_memory`, the function a run's in-loop
evaluation and `xmodel2 eval` score tasks with, so a branch's score is what `xmodel2 eval` would
report for its final checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from xmodel2.data.mixture import held_out_blocks
from xmodel2.data.sft_mask import IGNORE_INDEX, assistant_mask, masked_targets
from xmodel2.data.shards import ShardReader
from xmodel2.errors import UserError
from xmodel2.eval.report import as_json
from xmodel2.eval.runner import ACCURACY_METRICS, headline_accuracies, score_in_memory
from xmodel2.fileio import atomic_write_json
from xmodel2.train.loss import next_token_loss
from xmodel2.train.runconfig import RunConfig
from xmodel2.train.trainer import autocast_context, evaluate_loss

ANSWER_BATCH = 16  # sequences per forward pass of the answer loss
# Sequences per forward pass of the held-out loss; fixed, because the training micro-batch may be
# "auto" (settled only inside the run) and scoring must not depend on how a branch was split.
HELDOUT_BATCH = 16


def heldout_loss(model, run: RunConfig, shard_dir: Path, sequences: int, device) -> float:
    """Mean next-token loss over the first `sequences` packed sequences of a held-out shard."""
    blocks = held_out_blocks(shard_dir, run.data.seq_len, sequences, HELDOUT_BATCH)
    return evaluate_loss(model, blocks, run.train.precision, device)


def answer_loss(model, tokenizer, shard_dir: Path, seq_len: int, max_sequences: int, precision: str,
                device) -> float:
    """Mean next-token loss over assistant tokens only, on the first packed sequences of a shard."""
    tokens = np.asarray(ShardReader(str(shard_dir)).tokens)
    mask = assistant_mask(tokens, tokenizer)
    count = min(max_sequences, (len(tokens) - 1) // seq_len)
    windows = np.stack([tokens[i * seq_len:i * seq_len + seq_len + 1] for i in range(count)]).astype(np.int64)
    masks = np.stack([mask[i * seq_len:i * seq_len + seq_len + 1] for i in range(count)])
    targets = masked_targets(windows, masks, IGNORE_INDEX)
    was_training = model.training
    model.eval()
    total, counted = 0.0, 0
    with torch.no_grad():
        for i in range(0, count, ANSWER_BATCH):
            inputs = torch.from_numpy(windows[i:i + ANSWER_BATCH, :-1]).to(device)
            target = torch.from_numpy(targets[i:i + ANSWER_BATCH]).to(device)
            n = int((target != IGNORE_INDEX).sum())
            if n == 0:
                continue
            with autocast_context(precision, device):
                total += next_token_loss(model, inputs, target).item() * n
            counted += n
    model.train(was_training)
    if counted == 0:
        raise UserError(f"{shard_dir}: no assistant tokens in the first {count} sequences")
    return total / counted


def eval_accuracy(model, tokenizer, tasks: str, limit: int | None, out_file: Path) -> float:
    """Mean over tasks of each task's headline accuracy; the full results go to `out_file` as
    `xmodel2 eval --output` writes them."""
    specs = task_names(tasks)
    outcome, scorer = score_in_memory(model, tokenizer, specs, limit)
    atomic_write_json(out_file, as_json(outcome.metrics, outcome.details,
                                        {"tasks": specs, "limit": limit, "batch_size": scorer.batch_size,
                                         "add_bos": scorer.add_bos}))
    per_task = headline_accuracies(outcome.metrics)
    if not per_task:
        raise UserError(f"{out_file}: no accuracy ({', '.join(ACCURACY_METRICS)}) in the eval results")
    return sum(per_task.values()) / len(per_task)


def task_names(tasks: str) -> list[str]:
    """The names in a comma-separated task list, as `xmodel2 eval --tasks` reads it."""
    return [spec.strip() for spec in tasks.split(",") if spec.strip()]
