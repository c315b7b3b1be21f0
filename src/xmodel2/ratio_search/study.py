"""The Optuna side of the search: search space, objective, the study and worker processes.

The study is set up by `xmodel2.train.study`, as the wind tunnel's is: the trial budget is the
study's total, shared by every worker process on every machine; a trial whose worker died is
run again with the same mixture; worker i trains on GPU i (round-robin), or the workers split
the CPU's cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from xmodel2.data.sft import CATEGORIES
from xmodel2.errors import UserError
from xmodel2.ratio_search.branch import BranchSettings
from xmodel2.train import study as shared_study
from xmodel2.train.study import HEARTBEAT_S, StudySpec, seeded_per_trial, threads_per_worker, worker_devices

# Category mixes of the grid search (weights are normalized): an even spread, and the report's
# emphasis on reasoning (math and chain-of-thought logic) with code.
GRID_MIXES = {
    "uniform": {c: 1.0 for c in CATEGORIES},
    "reasoning": {"math": 0.35, "logic": 0.35, "code": 0.1, "knowledge": 0.1, "commonsense": 0.1},
    "knowledge": {"math": 0.1, "logic": 0.1, "code": 0.1, "knowledge": 0.35, "commonsense": 0.35},
    "code": {"math": 0.2, "logic": 0.2, "code": 0.4, "knowledge": 0.1, "commonsense": 0.1},
}
OBJECTIVES = {  # name -> (metric, direction)
    "sft": ("sft_val_loss", "minimize"),
    "answer": ("sft_answer_loss", "minimize"),
    "mean": ("mean_val_loss", "minimize"),
    "accuracy": ("accuracy", "maximize"),
}


def grid_values(shares: list[float], mixes: list[str]) -> dict[str, list]:
    return {"sft_share": shares, "mix": mixes}


def sample(trial, grid: dict | None, categories: list[str]) -> tuple[float, dict[str, float], str]:
    """(SFT share, category weights over the prepared `categories`, label) of a trial."""
    if grid:
        share = trial.suggest_categorical("sft_share", grid["sft_share"])
        mix = trial.suggest_categorical("mix", grid["mix"])
        weights = {c: w for c, w in GRID_MIXES[mix].items() if c in categories}
        total = sum(weights.values())
        return float(share), {c: w / total for c, w in weights.items()}, mix
    share = trial.suggest_float("sft_share", 0.0, 0.9, step=0.05)
    raw = {c: trial.suggest_float(f"w_{c}", 0.05, 1.0) for c in categories}
    total = sum(raw.values())
    weights = {c: w / total for c, w in raw.items()}
    return share, weights, max(weights, key=weights.get)


def open_study(storage: str, name: str, direction: str, grid: dict | None, seed: int, attrs: dict,
               heartbeat_s: int = HEARTBEAT_S):
    """Create or reopen the study; a reopened study must have been made with the same settings."""
    import optuna

    if grid:
        # One seed everywhere: it orders the grid, and trial n takes grid point n, so processes
        # that share the study never pick the same point.
        sampler = optuna.samplers.GridSampler(grid, seed=seed)
    else:
        sampler = seeded_per_trial(lambda s: optuna.samplers.TPESampler(seed=s, constant_liar=True), seed)
    spec = StudySpec(storage=storage, name=name, direction=direction, identity=attrs,
                     identity_key="settings", identity_what="settings", name_option="--study",
                     heartbeat_s=heartbeat_s)
    return shared_study.open_study(spec, sampler)


def objective_value(metrics: dict, objective: str) -> float:
    key = OBJECTIVES[objective][0]
    if key == "mean_val_loss":
        return 0.5 * (metrics["sft_val_loss"] + metrics["pretrain_val_loss"])
    if key not in metrics:
        raise UserError(f"objective {objective!r} needs {key}, which this search did not measure")
    return metrics[key]


def worker_loop(spec_path: Path, device: str) -> None:
    """Run trials on `device` until the study holds enough finished ones, whoever ran them
    (what each worker process does)."""
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    spec["settings"]["run"]["train"]["device"] = device  # the branch trains where this worker was put
    settings = BranchSettings(**spec["settings"])
    grid = spec["grid"]
    study = open_study(spec["storage"], spec["study"], OBJECTIVES[spec["objective"]][1], grid,
                       spec["seed"], spec["attrs"], spec["heartbeat_s"])
    trials_dir = Path(settings.out_dir) / "trials"

    def objective(trial) -> float:
        from xmodel2.ratio_search.branch import run_branch

        share, weights, label = sample(trial, grid, spec["categories"])
        metrics = run_branch(settings, share, weights, trials_dir / f"trial-{trial.number:04d}")
        metrics["label"] = label
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        value = objective_value(metrics, spec["objective"])
        print(f"trial {trial.number} on {device}: sft_share={share:.2f} mix={label} "
              f"sft_val_loss={metrics['sft_val_loss']:.4f} pretrain_val_loss={metrics['pretrain_val_loss']:.4f} "
              f"objective={value:.4f}", file=sys.stderr, flush=True)
        return value

    shared_study.run_trials(study, objective, spec["n_trials"], heartbeat_s=spec["heartbeat_s"])


def finished_trials(study) -> int:
    """Trials the budget counts: completed or pruned, by any process."""
    return shared_study.count_trials(study).finished


def run_workers(spec: dict, out_dir: Path, workers: int, device: str) -> None:
    """Start `workers` processes on the shared study, worker i on the i-th of `worker_devices`,
    and wait for them."""
    spec_path = out_dir / "search-spec.json"
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    threads = str(threads_per_worker(workers))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    procs = []
    for index, worker_device in enumerate(worker_devices(device, workers)):
        log = open(out_dir / f"worker-{index}.log", "a", encoding="utf-8")
        command = [sys.executable, "-m", "xmodel2.ratio_search.worker", str(spec_path), worker_device, threads]
        procs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    failed = []
    try:
        for index, (proc, log) in enumerate(procs):
            if proc.wait() != 0:
                failed.append(index)
            log.close()
    except BaseException:
        for proc, _ in procs:
            proc.terminate()
        raise
    if failed:
        raise UserError(f"ratio-search worker(s) {failed} failed; see {out_dir}/worker-N.log")


def spec_for(settings: BranchSettings, storage: str, study: str, objective: str, n_trials: int,
             grid: dict | None, seed: int, categories: list[str], heartbeat_s: int = HEARTBEAT_S) -> dict:
    attrs = {"objective": objective, "checkpoint": settings.checkpoint, "grid": grid,
             "max_repeats": settings.max_repeats, "sft_sequences": settings.sft_sequences,
             "eval_tasks": settings.eval_tasks, "decay_steps": settings.run["stages"][-1]["steps"]}
    return {"settings": asdict(settings), "storage": storage, "study": study, "objective": objective,
            "n_trials": n_trials, "grid": grid, "seed": seed, "attrs": attrs, "categories": categories,
            "heartbeat_s": heartbeat_s}
