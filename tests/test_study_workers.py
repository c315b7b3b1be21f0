"""Many processes on one study: `xmodel2 windtunnel search` started twice against one SQLite
study shares the trial budget without running a parameter set twice, and a process killed in
the middle of a trial loses nothing: its trial is run again by the other. Plus where workers run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

optuna = pytest.importorskip("optuna")

from xmodel2.errors import UserError  # noqa: E402
from xmodel2.train.study import open_storage, pin_device, threads_per_worker, worker_devices  # noqa: E402

# Tiny proxies; their two validations (64 sequences each) still take seconds, so a kill lands
# inside a trial.
PROXY = ["--steps", "4", "--eval-every", "2", "--seq-len", "16", "--batch-size", "2", "--vocab-size", "1024"]
FINISHED = ("COMPLETE", "PRUNED")


@pytest.fixture(scope="module")
def cache(proxy_cache: Path) -> Path:
    return proxy_cache


def start_search(storage: str, out: Path, cache: Path, trials: int, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "xmodel2", "windtunnel", "search", "--storage", storage,
               "--trials", str(trials), "--workers", "1", "--device", "cpu", "--out", str(out),
               "--cache", str(cache), *PROXY, *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def trials(storage: str) -> list:
    return optuna.load_study(study_name="mup-search", storage=open_storage(storage)).trials


def running_trials(storage: str) -> list:
    try:
        return [t for t in trials(storage) if t.state.name == "RUNNING"]
    except KeyError:  # the study is not created yet
        return []


def param_set(trial) -> tuple:
    return tuple(sorted(trial.params.items()))


def test_two_processes_share_the_budget_and_never_repeat_a_trial(cache: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    first = start_search(storage, tmp_path / "a", cache, 4)
    second = start_search(storage, tmp_path / "b", cache, 4)
    finish(first), finish(second)
    done = [t for t in trials(storage) if t.state.name in FINISHED]
    assert len(done) == 4  # the budget is the study's, not each process's
    assert len({param_set(t) for t in done}) == 4  # no parameter set ran twice
    assert {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in done} == {first.pid, second.pid}
    # a third process on the finished study runs nothing; a larger budget resumes it
    before = len(trials(storage))
    finish(start_search(storage, tmp_path / "a", cache, 4))
    assert len(trials(storage)) == before
    finish(start_search(storage, tmp_path / "a", cache, 5))
    done = [t for t in trials(storage) if t.state.name in FINISHED]
    assert len(done) == 5 and len({param_set(t) for t in done}) == 5


def test_a_killed_workers_trial_is_run_again_and_nothing_is_lost(cache: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    # a dead worker's trial is retried after 6 s of silence; longer trials, so the kill lands
    # inside the one the poll saw running
    heartbeat = ["--heartbeat", "2", "--steps", "24", "--eval-every", "12"]
    victim = start_search(storage, tmp_path / "a", cache, 4, *heartbeat)
    survivor = start_search(storage, tmp_path / "b", cache, 4, *heartbeat)
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and victim.poll() is None:
        for t in running_trials(storage):
            if t.user_attrs.get("worker", "").endswith(f":{victim.pid}"):
                victim.send_signal(signal.SIGKILL)  # no chance to clean up, as with a lost machine
                killed = t
                break
        time.sleep(0.2)
    victim.communicate(timeout=60)
    assert killed is not None, "the first process never ran a trial"
    assert victim.returncode == -signal.SIGKILL
    finish(survivor)
    after = {t.number: t for t in trials(storage)}
    assert after[killed.number].state.name == "FAIL"  # marked dead once its heartbeat stopped
    retries = [t for t in after.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state.name in FINISHED and retry.params == killed.params
    assert retry.user_attrs["worker"].endswith(f":{survivor.pid}")
    done = [t for t in after.values() if t.state.name in FINISHED]
    assert len(done) == 4 and len({param_set(t) for t in done}) == 4


def test_workers_are_pinned_round_robin_over_the_gpus() -> None:
    assert [pin_device(i, 4) for i in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert [pin_device(i, 1) for i in range(3)] == ["cuda:0"] * 3
    assert pin_device(5, 0) == "cpu"
    with pytest.raises(ValueError):
        pin_device(-1, 2)


def test_worker_devices_follow_the_request() -> None:
    assert worker_devices("cpu", 3) == ["cpu"] * 3
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count:
        assert worker_devices("cuda", 3) == [f"cuda:{i % count}" for i in range(3)]
        assert worker_devices("auto", 2) == [f"cuda:{i % count}" for i in range(2)]
        assert worker_devices("cuda:0", 2) == ["cuda:0", "cuda:0"]
    else:
        assert worker_devices("auto", 2) == ["cpu", "cpu"]
        with pytest.raises(UserError, match="--device=cuda: this machine has no CUDA device"):
            worker_devices("cuda", 2)
    with pytest.raises(UserError, match="--device=gpu0"):
        worker_devices("gpu0", 1)


def test_cpu_workers_split_the_cores() -> None:
    cores = threads_per_worker(1)
    assert cores >= 1
    assert threads_per_worker(2) == max(1, cores // 2)
    assert threads_per_worker(10 * cores) == 1
