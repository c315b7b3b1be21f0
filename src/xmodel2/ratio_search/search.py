"""The whole search: stable checkpoint, SFT preparation, shared shards, trials, best mixture, plot."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from xmodel2.ratio_search.decay_mixture import add_sft_sources, decay_stage_index, mixture_fragment, with_decay_mixture
from xmodel2.data.sft import SFTFile, prepare_sft
from xmodel2.errors import UserError
from xmodel2.fileio import atomic_write_text
from xmodel2.ratio_search.branch import BranchSettings, branch_template
from xmodel2.ratio_search.study import (GRID_MIXES, OBJECTIVES, finished_trials, grid_values, open_study,
                                       run_workers, spec_for)
from xmodel2.train.distributed import say
from xmodel2.train.runconfig import RunConfig
from xmodel2.train.study import HEARTBEAT_S, default_storage, worker_devices


@dataclass
class SearchOptions:
    sft_files: list[SFTFile]
    checkpoint: Path | None = None
    stable_steps: int | None = None  # train the stable stage this long when no checkpoint is given
    held_out_percent: int = 5
    sampler: str = "grid"
    shares: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(10)])
    mixes: list[str] = field(default_factory=lambda: ["uniform", "reasoning"])
    trials: int | None = None
    workers: int = 2
    device: str | None = None  # where the branches train (None: the run config's train.device)
    heartbeat: int = HEARTBEAT_S  # seconds between a running trial's heartbeats
    decay_steps: int | None = None
    half_life: float | None = None
    objective: str = "mean"
    eval_tasks: str | None = None
    eval_limit: int | None = 50
    storage: str | None = None
    study: str = "ratio-search"
    sft_sequences: int = 64
    max_repeats: float = 50.0
    keep_checkpoints: bool = False
    seed: int = 0


def stable_checkpoint(run: RunConfig, out_dir: Path, total_steps: int | None = None) -> Path:
    """Train (or resume) the run's stages before its decay stage into OUT/stable; its last checkpoint.

    `total_steps` shortens them: the last of them is cut so that they add up to it.
    """
    from xmodel2.train.run import run_pretraining

    index = decay_stage_index(run)
    steps = run.stage_steps()[:index]
    if total_steps is not None:
        if total_steps <= sum(steps[:-1]):
            raise UserError(f"--stable-steps {total_steps} leaves no steps for stage {run.stages[index - 1].name!r}")
        steps[-1] = total_steps - sum(steps[:-1])
    stable = copy.deepcopy(run)
    stable.stages = stable.stages[:index]
    for stage, n in zip(stable.stages, steps):
        stage.steps = n
    stable.train.steps = sum(steps)
    stable.checkpoint.every = stable.train.steps
    stable.checkpoint.keep = 1
    say(f"training the stable stage ({stable.train.steps} steps) into {out_dir / 'stable'}")
    return run_pretraining(stable, out_dir / "stable", show_progress=False).final_checkpoint


def completed_trials(study) -> list[dict]:
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rows.append({"number": t.number, "value": t.value, **t.user_attrs})
    return rows


def run_search(run: RunConfig, out_dir: Path, options: SearchOptions) -> dict:
    from xmodel2.train.engine import prepare_sources, prepare_tokenizer

    if options.objective not in OBJECTIVES:
        raise UserError(f"--objective must be one of {', '.join(OBJECTIVES)}")
    if options.objective == "accuracy" and not options.eval_tasks:
        raise UserError("--objective accuracy needs --eval-tasks")
    unknown = [m for m in options.mixes if m not in GRID_MIXES]
    if unknown:
        raise UserError(f"--mixes: unknown mix {unknown[0]!r} (mixes: {', '.join(GRID_MIXES)})")
    if any(not 0 <= s <= 1 for s in options.shares):
        raise UserError("--shares: every share must be in [0, 1]")
    for option, value in (("--workers", options.workers), ("--heartbeat", options.heartbeat)):
        if value < 1:
            raise UserError(f"{option} must be at least 1, got {value}")
    device = options.device or run.train.device
    # an absent GPU fails before any training
    worker_devices(device, options.workers, "--device" if options.device else "train.device")
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = options.checkpoint or stable_checkpoint(run, out_dir, options.stable_steps)
    if not checkpoint.is_dir():
        raise UserError(f"{checkpoint}: checkpoint folder not found")

    prepared = prepare_sft(options.sft_files, out_dir / "sft", options.held_out_percent)
    say(f"SFT data in {prepared.folder}\n{prepared.summary()}")
    template = branch_template(add_sft_sources(run, prepared), checkpoint, options.decay_steps, options.half_life)
    tokenizer = prepare_tokenizer(template, out_dir)
    prepare_sources(template, out_dir, tokenizer)  # shards shared by every trial

    grid = grid_values(options.shares, options.mixes) if options.sampler == "grid" else None
    n_trials = options.trials or (len(options.shares) * len(options.mixes) if grid else 40)
    storage = options.storage or default_storage(out_dir)
    settings = BranchSettings(run=template.to_dict(), checkpoint=str(checkpoint.resolve()),
                              out_dir=str(out_dir.resolve()), max_repeats=options.max_repeats,
                              sft_sequences=options.sft_sequences, eval_tasks=options.eval_tasks,
                              eval_limit=options.eval_limit, keep_checkpoints=options.keep_checkpoints)
    spec = spec_for(settings, storage, options.study, options.objective, n_trials, grid, options.seed,
                    sorted(prepared.train_files), options.heartbeat)
    direction = OBJECTIVES[options.objective][1]
    study = open_study(storage, options.study, direction, grid, options.seed, spec["attrs"], options.heartbeat)
    done = finished_trials(study)
    if done < n_trials:
        say(f"{n_trials - done} of {n_trials} trials ({options.sampler}) to run with {options.workers} "
            f"workers on {device}; study {options.study!r} in {storage}; logs in {out_dir}/worker-N.log")
        run_workers(spec, out_dir, options.workers, device)
    return summarize(run, prepared, study, out_dir, options.objective, options.max_repeats)


def summarize(run: RunConfig, prepared, study, out_dir: Path, objective: str, max_repeats: float) -> dict:
    from xmodel2.ratio_search.plot import plot_search
    from xmodel2.ratio_search.share_interval import share_interval

    trials = completed_trials(study)
    if not trials:
        raise UserError(f"study {study.study_name!r}: no completed trials")
    minimize = OBJECTIVES[objective][1] == "minimize"
    for t in trials:
        t["minimize"] = minimize
    best = study.best_trial
    best_run = with_decay_mixture(add_sft_sources(run, prepared), best.user_attrs["sft_share"],
                                  best.user_attrs["weights"], max_repeats=max_repeats)
    header = (f"# xmodel2 ratio-search: best of {len(trials)} trials, SFT share "
              f"{best.user_attrs['sft_share']:.0%}, mix {best.user_attrs['label']}, "
              f"{objective} objective {best.value:.4f}\n")
    atomic_write_text(out_dir / "best-mixture.yaml",
                      header + f"# run it: xmodel2 pretrain {out_dir / 'best-mixture.yaml'}\n"
                      + yaml.safe_dump(best_run.to_dict(), sort_keys=False, allow_unicode=True))
    atomic_write_text(out_dir / "best-decay-stage.yaml",
                      header + f"# apply: xmodel2 pretrain CONFIG --set-from {out_dir / 'best-decay-stage.yaml'}\n"
                      + yaml.safe_dump(mixture_fragment(best_run), sort_keys=False, allow_unicode=True))
    atomic_write_text(out_dir / "trials.jsonl",
                      "".join(json.dumps(t, sort_keys=True) + "\n" for t in sorted(trials, key=lambda t: t["number"])))
    metric = {"mean": "mean of held-out SFT and pretraining loss", "sft": "held-out SFT loss (nats/token)",
              "answer": "held-out SFT answer loss (nats/token)", "accuracy": "task accuracy"}[objective]
    interval = share_interval([t["sft_share"] for t in trials], [t["value"] for t in trials], maximize=not minimize)
    if interval is not None:
        atomic_write_text(out_dir / "best-share.json", json.dumps(
            {**interval.to_dict(), "report_range": interval.report_range_verdict(), "trials": len(trials),
             "objective": objective}, indent=1) + "\n")
    png = plot_search(trials, metric, out_dir / "ratio-search.png",
                      f"ratio search: {len(trials)} decay branches", interval)
    return {"trials": len(trials), "best_share": best.user_attrs["sft_share"], "best_label": best.user_attrs["label"],
            "best_value": best.value, "best_weights": best.user_attrs["weights"], "share_interval": interval,
            "plot": png, "config": out_dir / "best-mixture.yaml"}
