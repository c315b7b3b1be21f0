"""The Bayesian μP search of the report's wind tunnel: Optuna TPE over μP's knobs on a nano proxy.

Space (the report's appendix): scale_emb 2..20 step 1; dim_model_base in {32, ..., 1024};
scale_depth 1..5 step 0.1; peak LR 0.001..0.1 step 0.001. Each trial is a real short training
run (`train_proxy`) scored by held-out loss; intermediate validation losses go to a median
pruner, which stops trials that trail the median of earlier trials at the same step. A run that
diverges scores +inf: TPE ranks it last, and the importance analysis leaves it out.

The study lives in an Optuna storage (a SQLite file by default; a PostgreSQL or MySQL URL lets
several machines share one study) and is set up by `xmodel2.train.study`: every process, on
this machine or another, runs the same command against it until the study holds the requested
number of finished trials; a trial whose worker died is run again with the same parameters.
Each process runs its trials on its own device: one worker per GPU, or the CPU's cores split.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from xmodel2.model.config import ModelConfig, preset
from xmodel2.train import study as shared_study
from xmodel2.train.study import HEARTBEAT_S, StudySpec, seeded_per_trial, threads_per_worker, worker_devices
from xmodel2.windtunnel.proxy import ProxyData, ProxySettings, pinned, train_proxy

DIM_MODEL_BASES = (32, 64, 128, 256, 512, 1024)
PARAMS = ("scale_emb", "dim_model_base", "scale_depth", "lr")


@dataclass(frozen=True)
class SearchSettings:
    proxy: ProxySettings = field(default_factory=lambda: ProxySettings(steps=120, eval_every=24))
    preset: str = "nano"
    seed: int = 0
    warmup_trials: int = 5  # trials that run to the end before the pruner may stop any

    def identity(self) -> dict:
        """What must match for trials of two invocations to be comparable."""
        out = asdict(self)
        out["proxy"]["mixture"] = [list(pair) for pair in self.proxy.mixture]
        out["proxy"].pop("device")  # machines with and without GPUs may share one study
        out.pop("seed")
        out.pop("warmup_trials")
        return out


def suggest(trial) -> dict:
    return {
        "scale_emb": trial.suggest_int("scale_emb", 2, 20),
        "dim_model_base": trial.suggest_categorical("dim_model_base", list(DIM_MODEL_BASES)),
        "scale_depth": trial.suggest_float("scale_depth", 1.0, 5.0, step=0.1),
        "lr": trial.suggest_float("lr", 0.001, 0.1, step=0.001),
    }


def search_model(settings: SearchSettings, vocab_size: int, params: dict) -> ModelConfig:
    mup = {k: params[k] for k in ("scale_emb", "dim_model_base", "scale_depth")}
    return preset(settings.preset, vocab_size=vocab_size,
                  max_position_embeddings=settings.proxy.seq_len, mup=mup)


# ---- the study -------------------------------------------------------------------------------------

def study_spec(url: str, name: str, settings: SearchSettings, heartbeat_s: int = HEARTBEAT_S) -> StudySpec:
    return StudySpec(storage=url, name=name, direction="minimize", identity=settings.identity(),
                     identity_key="proxy", identity_what="proxy settings", name_option="--study-name",
                     heartbeat_s=heartbeat_s)


def open_study(url: str, name: str, settings: SearchSettings, heartbeat_s: int = HEARTBEAT_S):
    """Create the study or load it; refuse to mix trials run with different proxy settings."""
    import optuna

    # TPE over independent parameters; the constant liar makes parallel workers treat running
    # trials as bad, so they do not all crowd the same promising point.
    sampler = seeded_per_trial(lambda seed: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
                               settings.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=settings.warmup_trials,
                                         n_warmup_steps=settings.proxy.eval_every)
    return shared_study.open_study(study_spec(url, name, settings, heartbeat_s), sampler, pruner)


# ---- trials ----------------------------------------------------------------------------------------

def objective(trial, data: ProxyData, settings: SearchSettings) -> float:
    import optuna

    params = suggest(trial)
    config = search_model(settings, data.vocab_size, params)

    def report(step: int, value: float) -> bool:
        trial.report(value, step)
        return trial.should_prune()

    result = train_proxy(config, params["lr"], data, settings.proxy, report)
    trial.set_user_attr("seconds", result.seconds)
    trial.set_user_attr("diverged", result.diverged)
    if result.stopped_early:
        raise optuna.TrialPruned(f"pruned at step {result.steps_done}")
    return result.val_loss  # math.inf when the run diverged


def run_trials(url: str, name: str, budget: int, data: ProxyData, settings: SearchSettings,
               log: Callable[[str], None] | None = None, heartbeat_s: int = HEARTBEAT_S) -> int:
    """Run trials in this process until the study holds `budget` finished ones (whoever ran
    them); `settings.proxy.device` is this process's device. Returns how many it finished."""
    study = open_study(url, name, settings, heartbeat_s)
    callbacks = [_logger(log)] if log else []
    return shared_study.run_trials(study, lambda t: objective(t, data, settings), budget, callbacks,
                                   heartbeat_s)


def _logger(log: Callable[[str], None]):
    def callback(study, trial) -> None:
        p = trial.params
        what = (f"val loss {trial.value:.4f}" if trial.value is not None else trial.state.name.lower())
        if trial.user_attrs.get("diverged"):
            what = "diverged"
        log(f"trial {trial.number}: {what} in {trial.user_attrs.get('seconds', 0):.0f} s "
            f"(scale_emb {p.get('scale_emb')}, dim_model_base {p.get('dim_model_base')}, "
            f"scale_depth {p.get('scale_depth', 0):.1f}, lr {p.get('lr', 0):.3f})")
    return callback


def _worker(job: tuple, heartbeat_s: int, threads: int) -> int:
    import torch

    from xmodel2.train.distributed import say

    torch.set_num_threads(threads)
    return run_trials(*job, log=say, heartbeat_s=heartbeat_s)


def run_search(url: str, name: str, budget: int, data: ProxyData, settings: SearchSettings,
               workers: int, log: Callable[[str], None] | None = None,
               heartbeat_s: int = HEARTBEAT_S) -> float:
    """Fill the study up to `budget` finished trials with `workers` processes on this machine
    (`settings.proxy.device`: one per GPU, or the CPU's cores split); other machines may work
    on the same study at the same time. Returns the seconds it took."""
    started = time.perf_counter()
    devices = worker_devices(settings.proxy.device, workers)
    threads = threads_per_worker(workers)
    jobs = [(url, name, budget, data, replace(settings, proxy=pinned(settings.proxy, device)))
            for device in devices]
    if len(jobs) == 1:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            run_trials(*jobs[0], log=log, heartbeat_s=heartbeat_s)
        finally:
            torch.set_num_threads(before)
    else:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=get_context("spawn")) as pool:
            for future in [pool.submit(_worker, job, heartbeat_s, threads) for job in jobs]:
                future.result()
    return time.perf_counter() - started


# ---- results ---------------------------------------------------------------------------------------

def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
        if t.user_attrs.get("over_budget"):  # refused before it ran: not a trial of the search
            continue
        value = t.value if t.value is None or math.isfinite(t.value) else None  # JSON has no inf
        rows.append({"number": t.number, "state": t.state.name, "value": value, "params": t.params,
                     "seconds": t.user_attrs.get("seconds"), "diverged": t.user_attrs.get("diverged"),
                     "intermediate": sorted(t.intermediate_values.items())})
    return rows


def importances(study) -> tuple[dict[str, float] | None, str]:
    """fANOVA parameter importances, or None with the reason when they cannot be computed."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return None, f"{len(complete)} completed trial(s); importances need at least 2"
    try:
        values = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        return None, str(exc)
    return {k: float(v) for k, v in values.items()}, "fANOVA (optuna.importance)"


def config_fragment(params: dict) -> dict:
    """The best parameters as the `model` and `train` sections `xmodel2 pretrain` reads."""
    return {"model": {"mup": {"scale_emb": int(params["scale_emb"]),
                              "dim_model_base": int(params["dim_model_base"]),
                              "scale_depth": round(float(params["scale_depth"]), 1)}},
            "train": {"lr": round(float(params["lr"]), 3)}}


def fragment_overrides(fragment: dict, prefix: str = "") -> list[str]:
    """Command-line overrides (--model.mup.scale_emb=12 ...) equal to the fragment."""
    out = []
    for key, value in fragment.items():
        if isinstance(value, dict):
            out += fragment_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"--{prefix}{key}={value}")
    return out


def check_fragment(fragment: dict) -> None:
    """Load the embedded default run config with the fragment applied: pretrain accepts it."""
    from xmodel2.train.runconfig import load_run_config, model_config

    run = load_run_config(None, fragment_overrides(fragment))
    model_config(run, run.tokenizer.vocab_size)
