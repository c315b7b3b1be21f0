"""The Optuna side of the search: search space, objective, the study database and worker processes."""

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


def open_study(storage: str, name: str, direction: str, grid: dict | None, seed: int, attrs: dict):
    """Create or reopen the study; a reopened study must have been made with the same settings."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A worker that dies mid-trial stops its heartbeat; its trial is then retried once.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = RDBStorage(storage, heartbeat_interval=30, grace_period=120,
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    sampler = optuna.samplers.GridSampler(grid, seed=seed) if grid else optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(storage=rdb, study_name=name, direction=direction, sampler=sampler,
                                load_if_exists=True)
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", attrs)
    elif saved != attrs:
        changed = sorted(k for k in set(saved) | set(attrs) if saved.get(k) != attrs.get(k))
        raise UserError(f"study {name!r} in {storage} was made with other settings ({', '.join(changed)}); "
                        "use a new --study name or the same settings")
    return study


def objective_value(metrics: dict, objective: str) -> float:
    key = OBJECTIVES[objective][0]
    if key == "mean_val_loss":
        return 0.5 * (metrics["sft_val_loss"] + metrics["pretrain_val_loss"])
    if key not in metrics:
        raise UserError(f"objective {objective!r} needs {key}, which this search did not measure")
    return metrics[key]


def worker_loop(spec_path: Path) -> None:
    """Run trials until the study has enough finished ones (what each worker process does)."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    settings = BranchSettings(**spec["settings"])
    grid = spec["grid"]
    study = open_study(spec["storage"], spec["study"], OBJECTIVES[spec["objective"]][1], grid,
                       spec["seed"], spec["attrs"])
    trials_dir = Path(settings.out_dir) / "trials"

    def objective(trial: optuna.Trial) -> float:
        from xmodel2.ratio_search.branch import run_branch

        share, weights, label = sample(trial, grid, spec["categories"])
        metrics = run_branch(settings, share, weights, trials_dir / f"trial-{trial.number:04d}")
        metrics["label"] = label
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        value = objective_value(metrics, spec["objective"])
        print(f"trial {trial.number}: sft_share={share:.2f} mix={label} "
              f"sft_val_loss={metrics['sft_val_loss']:.4f} pretrain_val_loss={metrics['pretrain_val_loss']:.4f} "
              f"objective={value:.4f}", file=sys.stderr, flush=True)
        return value

    # The callback stops after a trial; this check keeps a resumed, finished study from starting one.
    if finished_trials(study) < spec["n_trials"]:
        study.optimize(objective, callbacks=[MaxTrialsCallback(spec["n_trials"], states=(TrialState.COMPLETE,))])


def finished_trials(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def run_workers(spec: dict, out_dir: Path, workers: int) -> None:
    """Start `workers` processes (one torch thread each) on the shared study and wait for them."""
    spec_path = out_dir / "search-spec.json"
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = []
    for index in range(workers):
        log = open(out_dir / f"worker-{index}.log", "a", encoding="utf-8")
        procs.append((subprocess.Popen([sys.executable, "-m", "xmodel2.ratio_search.worker", str(spec_path)],
                                       stdout=log, stderr=subprocess.STDOUT, env=env), log))
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
             grid: dict | None, seed: int, categories: list[str]) -> dict:
    attrs = {"objective": objective, "checkpoint": settings.checkpoint, "grid": grid,
             "max_repeats": settings.max_repeats, "sft_sequences": settings.sft_sequences,
             "eval_tasks": settings.eval_tasks, "decay_steps": settings.run["stages"][-1]["steps"]}
    return {"settings": asdict(settings), "storage": storage, "study": study, "objective": objective,
            "n_trials": n_trials, "grid": grid, "seed": seed, "attrs": attrs, "categories": categories}
