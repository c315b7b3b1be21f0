"""The Bayesian μP search of the report's wind tunnel: Optuna TPE over μP's knobs on a nano proxy.

Space (the report's appendix): scale_emb 2..20 step 1; dim_model_base in {32, ..., 1024};
scale_depth 1..5 step 0.1; peak LR 0.001..0.1 step 0.001. Each trial is a real short training
run (`train_proxy`) scored by held-out loss; intermediate validation losses go to a median
pruner, which stops trials that trail the median of earlier trials at the same step. A run that
diverges scores +inf: TPE ranks it last, and the importance analysis leaves it out.

The study lives in an Optuna storage (a SQLite file by default; any RDB URL such as
postgresql://... lets several machines share one study). Creating it is idempotent, so a second
invocation adds trials to the same study; trials of a killed invocation are marked failed by
Optuna's heartbeat check when the study is next optimised. Worker processes each run their own
`study.optimize` against the shared storage, which is how Optuna parallelises.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from xmodel2.errors import UserError
from xmodel2.model.config import ModelConfig, preset
from xmodel2.windtunnel.proxy import ProxyData, ProxySettings, single_thread, train_proxy

DIM_MODEL_BASES = (32, 64, 128, 256, 512, 1024)
PARAMS = ("scale_emb", "dim_model_base", "scale_depth", "lr")
HEARTBEAT_S = 60  # a RUNNING trial without a heartbeat for GRACE_S is failed on the next start
GRACE_S = 300


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


# ---- storage ---------------------------------------------------------------------------------------

def open_storage(url: str):
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the heartbeat arguments are flagged experimental; they have been stable since Optuna 2.9
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kwargs = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}  # two workers share one file
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                          **kwargs)
    except Exception as exc:  # SQLAlchemy's many errors: bad URL, missing driver, unreachable server
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--storage {url}: cannot open the Optuna storage: {message}") from None


def open_study(url: str, name: str, settings: SearchSettings):
    """Create the study or load it; refuse to mix trials run with different proxy settings."""
    import optuna

    study = optuna.create_study(storage=open_storage(url), study_name=name, direction="minimize",
                                load_if_exists=True)
    identity = settings.identity()
    stored = study.user_attrs.get("proxy")
    if stored is None:
        study.set_user_attr("proxy", identity)
    elif stored != identity:
        changed = sorted(_differences(stored, identity))
        raise UserError(f"study {name!r} in {url} was run with other proxy settings "
                        f"({', '.join(changed)}); use a new --study-name or the same settings")
    return study


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = set(a) | set(b)
    out = []
    for key in keys:
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}: {x} vs {y}")
    return out


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


def run_trials(url: str, name: str, n_trials: int, seed: int, data: ProxyData,
               settings: SearchSettings, log: Callable[[str], None] | None = None) -> None:
    """Add `n_trials` trials to the study (in this process)."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=settings.warmup_trials,
                                         n_warmup_steps=settings.proxy.eval_every)
    study = optuna.load_study(study_name=name, storage=open_storage(url), sampler=sampler, pruner=pruner)
    callbacks = [_logger(log)] if log else []
    study.optimize(lambda t: objective(t, data, settings), n_trials=n_trials, callbacks=callbacks)


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


def _worker(job: tuple) -> None:
    single_thread()
    from xmodel2.windtunnel.proxy import say

    run_trials(*job, log=say)


def run_search(url: str, name: str, n_trials: int, data: ProxyData, settings: SearchSettings,
               workers: int, log: Callable[[str], None] | None = None) -> float:
    """Add `n_trials` trials over `workers` processes; returns the seconds it took."""
    started = time.perf_counter()
    study = open_study(url, name, settings)
    first = len(study.trials)
    # Each worker's sampler gets its own seed, shifted by the trials already stored, so a resumed
    # study does not replay the random start-up samples of the last invocation.
    shares = [n_trials // workers + (i < n_trials % workers) for i in range(workers)]
    jobs = [(url, name, n, settings.seed + first + 1000 * i, data, settings)
            for i, n in enumerate(shares) if n > 0]
    if len(jobs) == 1:
        import torch

        threads = torch.get_num_threads()
        single_thread()
        try:
            run_trials(*jobs[0], log=log)
        finally:
            torch.set_num_threads(threads)
    else:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=get_context("spawn")) as pool:
            for future in [pool.submit(_worker, job) for job in jobs]:
                future.result()
    return time.perf_counter() - started


# ---- results ---------------------------------------------------------------------------------------

def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
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
