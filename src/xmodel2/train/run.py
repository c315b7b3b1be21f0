"""One pretraining run, start to finish: the checks, tokenizer and shards, then the engine.

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
from dataclasses import dataclass
from pathlib import Path

import torch

from xmodel2.errors import UserError
from xmodel2.eval.runner import check_task_names
from xmodel2.folders import claim_run_folder
from xmodel2.train import distributed
from xmodel2.train.callbacks import Validate
from xmodel2.train.checkpoint import STATE_FILE, latest_checkpoint
from xmodel2.train.engine import build_trainer, check_resume_matches, prepare_run_data, settle_run, training_inputs
from xmodel2.train.hardware import pick_device
from xmodel2.train.runconfig import RunConfig, model_config
from xmodel2.train.sizing import check_memory, expected_vocab_size, settled_micro_batch
from xmodel2.train.trainer import TrainingDiverged, evaluate_loss


@dataclass
class RunResult:
    out_dir: Path
    final_checkpoint: Path
    val_loss_start: float | None
    val_loss_end: float | None


# ---- checks before any work ------------------------------------------------------------------------

def check_run(run: RunConfig, out_dir: Path, init_from: str | Path | None, device: torch.device,
              world: int = 1) -> None:
    """Refuse a run that cannot work before any tokenizer training, shard preparation or output:
    the model settings, the sequence length against the context, the batch split, `--init-from`,
    the inputs, the memory of one micro-batch step, and a resume under different settings."""
    config = model_config(run, expected_vocab_size(run, out_dir))
    if run.data.seq_len > config.max_position_embeddings:
        raise UserError(f"data.seq_len={run.data.seq_len} exceeds the model's context "
                        f"(model.max_position_embeddings={config.max_position_embeddings})")
    run = settled_micro_batch(run, config, device, world)
    if init_from is not None and latest_checkpoint(out_dir) is None:
        _check_is_checkpoint(Path(init_from))
    if run.train.eval_tasks:
        check_task_names(run.train.eval_tasks)
    for path in training_inputs(run) + _held_out_inputs(run):
        if not path.exists():
            raise UserError(f"{path}: input not found (data.sources)")
    check_memory(run, config, device, world)
    own = latest_checkpoint(out_dir)
    if own is not None:
        check_resume_matches(own, run)


def _held_out_inputs(run: RunConfig) -> list[Path]:
    return [run.resolve_path(p) for s in run.data.sources.values() if s.held_out for p in s.inputs]


def _check_is_checkpoint(path: Path) -> None:
    if not path.is_dir():
        raise UserError(f"{path}: checkpoint folder not found (--init-from)")
    if not (path / STATE_FILE).is_file():
        raise UserError(f"{path}: not a training checkpoint (no {STATE_FILE}); --init-from takes a "
                        "folder under a run's checkpoints/")


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
    world = distributed.world_size()
    run = settle_run(run, device, world, out_dir)
    check_run(run, out_dir, init_from, device, world)
    out_dir.mkdir(parents=True, exist_ok=True)
    with distributed.main_process_first():  # one rank prepares; the others find it done
        data = prepare_run_data(run, out_dir)
    trainer = build_trainer(run, out_dir, device, data, init_from=init_from, show_progress=show_progress)
    try:
        trainer.run()
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"{exc}. The last good checkpoint is the newest under "
                               f"{out_dir / 'checkpoints'}") from None
    validation = next(c for c in trainer.callbacks if isinstance(c, Validate))
    return RunResult(out_dir=out_dir, final_checkpoint=latest_checkpoint(out_dir),
                     val_loss_start=validation.first, val_loss_end=validation.last)


def held_out_perplexity(model, run: RunConfig, shard_dir: Path, device: torch.device) -> float:
    from xmodel2.data.mixture import held_out_blocks

    blocks = held_out_blocks(shard_dir, run.data.seq_len, run.finish.perplexity_sequences,
                             run.train.micro_batch_size)
    return math.exp(evaluate_loss(model, blocks, run.train.precision, device))
