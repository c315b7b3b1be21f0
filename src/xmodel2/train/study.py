"""Optuna studies that many worker processes share, on one machine or on many.

The wind tunnel's μP search and the ratio search keep their trials in one Optuna storage: a
SQLite file by default, or any SQLAlchemy URL (postgresql://..., mysql://...) that several
machines reach. Every process runs the same loop (`run_trials`) against the same study:

- The trial budget is global. A trial counts once it is finished, COMPLETE or PRUNED; a process
  returns when the study holds `budget` of them, whoever ran them. A process starts a trial
  only while finished + running + queued trials stay under the budget, and waits otherwise
  (a running trial may still die). Two processes that start a trial at the same instant may
  both pass that check; the one whose trial falls beyond the budget closes it as FAIL, with
  the user attribute `over_budget`, before it runs anything.
- A running trial sends a heartbeat. When its process dies (killed, out of memory, the machine
  lost), the heartbeat stops; after `grace_period` seconds the next process that looks marks it
  FAIL and queues a copy with the same parameters, which the next free process runs.
- Samplers are seeded by trial number, so processes that start together do not draw the same
  random start-up points, and a study run by one process is reproducible.

Workers of one machine are placed by `worker_devices`: one per GPU, round-robin, or all on
the CPU, which they share by splitting its cores (`threads_per_worker`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from xmodel2.errors import UserError

HEARTBEAT_S = 30
MAX_RETRIES = 3  # a trial that kills its worker every time (out of memory, say) is given up
SCHEMA_ATTEMPTS = 5


def grace_period(heartbeat_s: int) -> int:
    """Seconds without a heartbeat after which a running trial counts as dead: three missed
    beats, so a worker slowed by a busy database or machine is not declared dead."""
    return 3 * heartbeat_s


@dataclass(frozen=True)
class StudySpec:
    """Where a study lives and what every process that joins it must agree on (picklable)."""

    storage: str
    name: str
    direction: str = "minimize"
    # What must match for trials of two invocations to be comparable: stored in the study when
    # it is created, checked when it is reopened.
    identity: dict = field(default_factory=dict)
    identity_key: str = "settings"  # the study's user attribute that holds it
    identity_what: str = "settings"  # how a refusal names it ("proxy settings")
    name_option: str = "--study-name"  # the option that picks another study
    heartbeat_s: int = HEARTBEAT_S


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{(Path(out_dir) / 'study.db').resolve()}"


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats, the retry callback and the constant liar are flagged experimental; they have
    # been stable across Optuna 3 and 4
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def _retry_callback():
    from optuna import storages

    # Optuna 4.9 renamed the callback; the old name still works there, with a warning
    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    return retry(max_retry=MAX_RETRIES)


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S):
    """The RDB storage at `url`, with heartbeats and the retry of dead workers' trials."""
    import inspect

    import optuna

    _quiet_optuna()
    kwargs = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}  # workers take turns on one file
    accepted = inspect.signature(optuna.storages.RDBStorage).parameters
    callback_key = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in accepted
                    else "failed_trial_callback")
    kwargs[callback_key] = _retry_callback()
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s,
                                              grace_period=grace_period(heartbeat_s), **kwargs)
        except Exception as exc:  # SQLAlchemy's many errors: bad URL, missing driver, unreachable server
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            # Processes that open a new database together race to create its tables; the loser
            # finds them made ("table ... already exists") and succeeds on a second look.
            racing = any(sign in message for sign in ("already exists", "UNIQUE constraint", "Duplicate"))
            if not racing or attempt == SCHEMA_ATTEMPTS - 1:
                raise UserError(f"--storage {url}: cannot open the Optuna storage: {message}") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def open_study(spec: StudySpec, sampler=None, pruner=None):
    """Create the study or load it; refuse to mix trials run with other settings."""
    import optuna

    study = optuna.create_study(storage=open_storage(spec.storage, spec.heartbeat_s),
                                study_name=spec.name, direction=spec.direction, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    stored = study.user_attrs.get(spec.identity_key)
    if stored is None:
        study.set_user_attr(spec.identity_key, spec.identity)
    elif stored != spec.identity:
        changed = sorted(differences(stored, spec.identity))
        raise UserError(f"study {spec.name!r} in {spec.storage} was run with other {spec.identity_what} "
                        f"({', '.join(changed)}); use a new {spec.name_option} or the same settings")
    if study.direction.name.lower() != spec.direction:
        raise UserError(f"study {spec.name!r} in {spec.storage} is to {study.direction.name.lower()}, "
                        f"not {spec.direction}; use a new {spec.name_option}")
    return study


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """'key: old vs new' for every (nested) key whose value differs."""
    out = []
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}: {x} vs {y}")
    return out


# ---- samplers seeded by trial number --------------------------------------------------------------

def seeded_per_trial(make: Callable[[int], object], seed: int):
    """A sampler that draws trial n with `make(seed + n)`.

    One seed per process would make processes started together draw the same start-up points;
    one per trial number keeps them apart and keeps a single-process study reproducible.
    """
    from optuna.samplers import BaseSampler

    class TrialSeededSampler(BaseSampler):
        def __init__(self) -> None:
            self._number: int | None = None
            self._sampler = None

        def _for(self, trial):
            if trial.number != self._number:
                self._number, self._sampler = trial.number, make(seed + trial.number)
            return self._sampler

        def infer_relative_search_space(self, study, trial):
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial) -> None:
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values) -> None:
            self._for(trial).after_trial(study, trial, state, values)

    return TrialSeededSampler()


# ---- the global trial budget ----------------------------------------------------------------------

class OverBudget(Exception):
    """A trial started in a race beyond the study's budget; it is closed before it runs."""


@dataclass(frozen=True)
class TrialCounts:
    finished: int  # COMPLETE or PRUNED: what the budget counts
    running: int
    waiting: int  # queued: retries of dead workers' trials, enqueued parameter sets


def count_trials(study) -> TrialCounts:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return TrialCounts(finished=sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states),
                       running=states.count(TrialState.RUNNING), waiting=states.count(TrialState.WAITING))


def _is_queued(trial) -> bool:
    """Whether the trial was taken from the queue (a retry or an enqueued parameter set): those
    always run, since whoever queued them made room in the budget."""
    return "failed_trial" in trial.system_attrs or "fixed_params" in trial.system_attrs


def _place_in_budget(trials: Sequence, number: int) -> int:
    """1 + how many trials before `number` have run, run, or will run (FAIL is out)."""
    from optuna.trial import TrialState

    alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return sum(1 for t in trials if t.number <= number and t.state in alive)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _within_budget(objective: Callable, budget: int) -> Callable:
    def guarded(trial):
        trials = trial.study.get_trials(deepcopy=False)
        mine = next(t for t in trials if t.number == trial.number)
        if not _is_queued(mine) and _place_in_budget(trials, trial.number) > budget:
            trial.set_user_attr("over_budget", True)
            raise OverBudget(f"trial {trial.number} is beyond the budget of {budget} trials")
        trial.set_user_attr("worker", worker_name())  # which machine and process ran it
        return objective(trial)
    return guarded


class _DropOverBudget(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "OverBudget" not in record.getMessage()


def run_trials(study, objective: Callable, budget: int, callbacks: Sequence[Callable] = (),
               heartbeat_s: int = HEARTBEAT_S) -> int:
    """Run trials in this process until `study` holds `budget` finished ones; return how many
    this process finished. `callbacks(study, frozen_trial)` see every trial this process ran."""
    import optuna

    from optuna.trial import TrialState

    guarded = _within_budget(objective, budget)
    finished: list[int] = []

    def after(study, trial) -> None:
        if trial.user_attrs.get("over_budget"):
            return
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            finished.append(trial.number)
        for callback in callbacks:
            callback(study, trial)

    optuna_logger = logging.getLogger("optuna")
    drop = _DropOverBudget()
    optuna_logger.addFilter(drop)
    try:
        while True:
            counts = count_trials(study)
            if counts.finished >= budget:
                break
            if counts.waiting == 0 and counts.finished + counts.running >= budget:
                # every remaining trial runs elsewhere; stay to retry one whose worker dies
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                time.sleep(min(2.0, heartbeat_s / 2))  # a finished trial frees the wait soon
                continue
            study.optimize(guarded, n_trials=1, callbacks=[after], catch=(OverBudget,),
                           gc_after_trial=False)
    finally:
        optuna_logger.removeFilter(drop)
    return len(finished)


# ---- where workers run ----------------------------------------------------------------------------

def pin_device(worker: int, cuda_devices: int) -> str:
    """The device of worker `worker` on a machine with `cuda_devices` GPUs: round-robin over the
    GPUs (N workers on N GPUs get one each), or the CPU when there is none."""
    if worker < 0:
        raise ValueError(f"worker index must be >= 0, got {worker}")
    return f"cuda:{worker % cuda_devices}" if cuda_devices > 0 else "cpu"


def worker_devices(requested: str, workers: int, option: str = "--device") -> list[str]:
    """One device per worker: `auto` or `cuda` spread the workers over every GPU, `cuda:N`,
    `cpu` or `mps` put them all there."""
    import torch

    from xmodel2.train.hardware import pick_device

    device = pick_device(requested, option)
    if device.type == "cuda" and device.index is None:
        return [pin_device(i, torch.cuda.device_count()) for i in range(workers)]
    return [str(device)] * workers


def threads_per_worker(workers_on_cpu: int) -> int:
    """Torch threads of each worker that computes on the CPU: the cores split evenly (small
    models gain little from more threads, and threads of two processes fight)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers_on_cpu))
