"""One decay branch: train the decay stage from the stable checkpoint with a given mixture, then score it."""

from __future__ import annotations

import copy
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from xmodel2.errors import UserError
from xmodel2.eval.runner import check_task_names
from xmodel2.fileio import read_json
from xmodel2.ratio_search.decay_mixture import SFT_VALIDATION, decay_stage_index, with_decay_mixture
from xmodel2.ratio_search.scores import answer_loss, eval_accuracy, heldout_loss, task_names
from xmodel2.train.checkpoint import STATE_FILE
from xmodel2.train.runconfig import DecaySection, RunConfig, StageSection


@dataclass
class BranchSettings:
    """Everything a worker needs to run any trial (JSON-serializable)."""

    run: dict  # the branch template run config (stable + decay stage, SFT sources added)
    checkpoint: str  # the stable-stage checkpoint folder
    out_dir: str  # the search folder: data/ (shared shards) and trials/
    max_repeats: float = 50.0
    sft_sequences: int = 64  # held-out SFT sequences scored per trial
    eval_tasks: str | None = None  # comma-separated `xmodel2 eval` task names, scored when given
    eval_limit: int | None = 50
    keep_checkpoints: bool = False


def checkpoint_step(checkpoint: Path) -> int:
    return int(read_json(checkpoint / STATE_FILE, "trainer state")["step"])


def branch_template(run: RunConfig, checkpoint: Path, decay_steps: int | None = None,
                    half_life: float | None = None) -> RunConfig:
    """`run` cut to: the stable stage up to the checkpoint's step, then one decay stage.

    The checkpoint's tokenizer is reused so every branch reads the same token ids.
    """
    run = copy.deepcopy(run)
    index = decay_stage_index(run)
    if index == 0:
        raise UserError("ratio-search: the run config needs a stable stage before its decay stage")
    decay = run.stages[index]
    steps = decay_steps or run.stage_steps()[index]
    if decay.decay is None or half_life is not None or decay_steps is not None:
        scaled = decay.decay.half_life * steps / run.stage_steps()[index] if decay.decay else 0.2 * steps
        decay_section = DecaySection(shape=decay.decay.shape if decay.decay else "exponential",
                                     half_life=half_life or max(1.0, scaled),
                                     floor=decay.decay.floor if decay.decay else 0.0)
    else:
        decay_section = decay.decay
    start = checkpoint_step(checkpoint)
    stable = run.stages[index - 1]
    run.stages = [StageSection(name=stable.name, mixture=stable.mixture, steps=start, max_repeats=stable.max_repeats),
                  StageSection(name=decay.name, mixture=decay.mixture, steps=steps, decay=decay_section,
                               max_repeats=decay.max_repeats)]
    run.train.steps = start + steps
    run.train.warmup_steps = min(run.train.warmup_steps, start)
    run.train.val_every = steps
    run.checkpoint.every = steps
    run.checkpoint.keep = 1
    run.tokenizer.path = str(checkpoint.resolve())
    return run


def link_shared_data(trial_dir: Path, shared_data: Path) -> None:
    """Point the trial's data/ at the search's prepared shards (prepared once, read by all)."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    link = trial_dir / "data"
    if not link.exists():
        os.symlink(shared_data.resolve(), link, target_is_directory=True)


def run_branch(settings: BranchSettings, sft_share: float, weights: dict[str, float], trial_dir: Path) -> dict:
    """Train one decay branch into `trial_dir` and return its held-out metrics."""
    import torch

    from xmodel2.model.folder import load_model_folder
    from xmodel2.tokenizer import load_tokenizer
    from xmodel2.train.hardware import pick_device
    from xmodel2.train.run import run_pretraining
    from xmodel2.train.runconfig import run_config_from_dict

    template = run_config_from_dict(settings.run)
    if settings.eval_tasks:
        check_task_names(task_names(settings.eval_tasks))  # before the branch trains, not after
    run = with_decay_mixture(template, sft_share, weights, max_repeats=settings.max_repeats)
    shared = Path(settings.out_dir) / "data"
    link_shared_data(trial_dir, shared)
    result = run_pretraining(run, trial_dir, init_from=settings.checkpoint, show_progress=False)
    device = pick_device(run.train.device)
    model = load_model_folder(result.final_checkpoint, device=device)
    tokenizer = load_tokenizer(result.final_checkpoint)
    metrics = {"sft_share": sft_share, "weights": weights,
               "mixture": run.stages[-1].mixture,
               "pretrain_val_loss": result.val_loss_end}
    with torch.no_grad():
        metrics["sft_val_loss"] = heldout_loss(model, run, shared / SFT_VALIDATION, settings.sft_sequences, device)
        metrics["sft_answer_loss"] = answer_loss(model, tokenizer, shared / SFT_VALIDATION, run.data.seq_len,
                                                 settings.sft_sequences, run.train.precision, device)
    if settings.eval_tasks:
        metrics["accuracy"] = eval_accuracy(model, tokenizer, settings.eval_tasks, settings.eval_limit,
                                            trial_dir / "eval.json")
    if not all(math.isfinite(v) for k, v in metrics.items() if k.endswith("loss") and v is not None):
        raise UserError(f"{trial_dir}: a held-out loss is not finite")
    if not settings.keep_checkpoints:
        shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)
    return metrics
