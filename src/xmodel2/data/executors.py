"""Running a datatrove pipeline step on a Slurm cluster or on Ray, for `prepare`.

Slurm: datatrove's SlurmPipelineExecutor writes an sbatch array script (one array task per
datatrove task) and submits it. The joining of parts into the shard cannot happen on the login
node while the array runs, so a second job, dependent on the array's success, runs `join_command`
(the same `xmodel2 prepare`, which finds every part finished and only joins them). A dry run
writes both scripts and submits neither.

Ray: datatrove's RayPipelineExecutor on the cluster at `address`, or on a Ray instance started
here for the run and stopped after it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

from xmodel2.errors import UserError


@dataclass
class SlurmOptions:
    partition: str
    time: str = "24:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2
    dry_run: bool = False


@dataclass
class SlurmSubmission:
    encode_script: Path
    join_script: Path
    encode_job: str | None = None  # None: dry run, nothing submitted
    join_job: str | None = None


def check_sbatch(options: SlurmOptions) -> None:
    """Fail before any work if the job could not be submitted."""
    if not options.partition:
        raise UserError("--executor slurm needs --partition NAME")
    if not options.dry_run and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: no `sbatch` on PATH (run on a Slurm login node, "
                        "or add --slurm-dry-run to write the job scripts without submitting)")


def run_slurm(step, tasks: int, options: SlurmOptions, logging_dir: Path, join_command: list[str]) -> SlurmSubmission:
    """Submit `step` as a `tasks`-wide Slurm array and a dependent job running `join_command`."""
    from datatrove.executor.slurm import SlurmPipelineExecutor, launch_slurm_job

    check_sbatch(options)
    # The job runs the pipeline with datatrove's `launch_pickled_pipeline` and xmodel2 from this
    # Python environment: put its scripts folder first on the job's PATH.
    env_command = f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH"
    executor = SlurmPipelineExecutor(
        pipeline=[step], tasks=tasks, time=options.time, partition=options.partition,
        cpus_per_task=options.cpus_per_task, mem_per_cpu_gb=options.mem_per_cpu_gb,
        job_name="xmodel2-prepare", qos="", env_command=env_command, logging_dir=str(logging_dir),
        skip_completed=False, requeue=False)  # resumption is by part hashes, as for the local executor
    join_args = {"partition": options.partition, "time": options.time, "job-name": "xmodel2-prepare-join",
                 "cpus-per-task": options.cpus_per_task, "mem-per-cpu": f"{options.mem_per_cpu_gb:g}G",
                 "output": str(logging_dir / "slurm_logs" / "join-%j.out")}
    join_script = executor.get_launch_file_contents(join_args, f"cd {shlex.quote(os.getcwd())} && "
                                                    + shlex.join(join_command))
    encode_script = logging_dir / "launch_script.slurm"
    join_path = logging_dir / "join.slurm"
    if options.dry_run:
        _write_job_files(executor, tasks)
        join_path.write_text(join_script)
        return SlurmSubmission(encode_script, join_path)
    try:
        executor.run()  # writes launch_script.slurm and the pickled pipeline, then calls sbatch
        join_path.write_text(join_script)
        join_job = launch_slurm_job(join_script, executor.job_id_retriever,
                                    f"--dependency=afterok:{executor.job_id}")
    except subprocess.CalledProcessError as error:
        raise UserError(f"--executor slurm: sbatch failed with exit status {error.returncode}") from None
    return SlurmSubmission(encode_script, join_path, str(executor.job_id), str(join_job))


def _write_job_files(executor, tasks: int) -> None:
    """What datatrove's launch_job writes before it calls sbatch: the pickled executor, the ranks
    to run and the array script, so that `sbatch launch_script.slurm` by hand runs the same job."""
    import dill
    from dill import CONTENTS_FMODE

    with executor.logging_dir.open("executor.pik", "wb") as handle:
        dill.dump(deepcopy(executor), handle, fmode=CONTENTS_FMODE)
    with executor.logging_dir.open("ranks_to_run.json", "w") as handle:
        json.dump(list(range(tasks)), handle)
    pickled = executor.logging_dir.resolve_paths("executor.pik")
    script = executor.get_launch_file_contents(executor.get_sbatch_args(tasks),
                                               f"srun -l -n 1 launch_pickled_pipeline {pickled}")
    with executor.logging_dir.open("launch_script.slurm", "w") as handle:
        handle.write(script)


def run_ray(step, tasks: int, workers: int, address: str | None, mem_per_cpu_gb: float, logging_dir: Path) -> None:
    """Run `step` as `tasks` datatrove tasks on Ray, at most `workers` at a time."""
    try:
        import ray
        from datatrove.executor.ray import RayPipelineExecutor
    except ImportError:
        raise UserError("--executor ray needs ray: pip install 'xmodel2[ray]'") from None

    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        except ConnectionError as error:
            raise UserError(f"--ray-address {address}: {error}") from None
    try:
        executor = RayPipelineExecutor(pipeline=[step], tasks=tasks, workers=workers, skip_completed=False,
                                       logging_dir=str(logging_dir), cpus_per_task=1, mem_per_cpu_gb=mem_per_cpu_gb)
        executor.run()
    finally:
        if started_here:
            ray.shutdown()
