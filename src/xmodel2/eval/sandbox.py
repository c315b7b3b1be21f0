"""Run untrusted Python (model-written code) isolated by the operating system.

`run_sandboxed` hands the program to `sandbox_launch.py`, a small trusted launcher that puts it in
fresh Linux namespaces (user where not root, mount, PID, network, IPC, UTS) with a read-only root,
one writable size-limited tmpfs as /tmp and working folder, uid 65534, no capabilities, no new
privileges, resource limits and a wall-clock deadline that kills the whole PID namespace. The
launcher's docstring explains each step. Nothing in the program's own interpreter is trusted: an
audit hook there would not be a boundary (ctypes or any C extension passes it), and the escape
tests would then exercise the hook instead of the kernel.

Where the kernel refuses any of it, `IsolationUnavailable` names what was refused; the program
then runs only if the caller asks for `isolated=False` (a throwaway folder, rlimits and a timeout,
no protection of the file system or the network).
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LAUNCHER = Path(__file__).with_name("sandbox_launch.py")
TMPFS_BYTES = 64 << 20
OUTPUT_CHARS = 4000
NO_ISOLATION = "none (--allow-unsandboxed-code)"
GRACE_SECONDS = 10.0  # on top of the launcher's own deadline, for setting up and tearing down


class IsolationUnavailable(Exception):
    """The kernel refused part of the isolation; the message says which part and why."""


@dataclass
class SandboxResult:
    status: str  # "passed" (exit 0), "failed" (nonzero exit or killed by a signal), "timeout"
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def python() -> str:
    """The base interpreter: the program gets the standard library only, never the venv."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


@functools.lru_cache(maxsize=None)
def isolation() -> str:
    """What isolation this machine gives, e.g. "namespaces: mount,pid,net,ipc,uts; ...; uid 65534".

    Found by running an empty program; raises `IsolationUnavailable` (not cached) if it cannot.
    """
    return run_sandboxed("pass\n").isolation


def run_sandboxed(source: str, timeout: float = 10.0, memory_bytes: int = 1 << 30,
                  isolated: bool = True) -> SandboxResult:
    run = _run_isolated if isolated else _run_unisolated
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        status, isolation_used = run(source, timeout, memory_bytes, out, err)
        seconds = time.monotonic() - started
        return SandboxResult(status["status"], status.get("returncode"), _tail(out), _tail(err), seconds,
                             isolation_used)


def _run_isolated(source: str, timeout: float, memory_bytes: int, out, err) -> tuple[dict, str]:
    """The launcher on the base interpreter. The program goes on stdin, so there is no host folder
    to clean up; stdin then stays open until the launcher ends: if this process gives up or dies,
    the launcher sees it close and kills the sandbox. The program's output goes to unlinked host
    files, capped at 16 MiB by RLIMIT_FSIZE (a pipe would have no cap)."""
    status_read, status_write = os.pipe()
    command = [python(), "-I", "-S", "-B", str(LAUNCHER), str(timeout), str(memory_bytes), str(TMPFS_BYTES),
               str(status_write)]
    try:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd="/",
                                   env={"LANG": "C.UTF-8"}, pass_fds=(status_write,), start_new_session=True)
    finally:
        os.close(status_write)
    with process.stdin, os.fdopen(status_read, "rb") as status_file:
        try:
            program = source.encode("utf-8")
            process.stdin.write(b"%d\n%s" % (len(program), program))
            process.stdin.flush()
            process.wait(timeout=timeout + GRACE_SECONDS)
        except BrokenPipeError:
            process.wait(timeout=GRACE_SECONDS)  # the launcher failed before reading; its stderr says why
        except BaseException:
            process.stdin.close()  # the launcher kills the namespace and reports "abandoned"
            try:
                process.wait(timeout=GRACE_SECONDS)
            finally:
                _kill_group(process.pid)
                process.wait()
            raise
        report = dict(line.partition(" ")[::2] for line in status_file.read().decode("utf-8", "replace").splitlines())
    if "setup_error" in report:
        raise IsolationUnavailable(report["setup_error"])
    if "outcome" not in report:
        raise IsolationUnavailable(f"the sandbox launcher ended without a report (exit {process.returncode}): "
                                   f"{' '.join(_tail(err).split()[-40:])}")
    return _status(report["outcome"]), report["isolation"]


def _status(outcome: str) -> dict:
    kind, _, number = outcome.partition(" ")
    if kind == "exit":
        return {"status": "passed" if number == "0" else "failed", "returncode": int(number)}
    if kind == "signal":
        return {"status": "failed", "returncode": -int(number)}
    return {"status": "timeout"}


def _run_unisolated(source: str, timeout: float, memory_bytes: int, out, err) -> tuple[dict, str]:
    """Only resource limits, a throwaway working folder and a timeout; the user asked for it."""
    workdir = Path(tempfile.mkdtemp(prefix="xmodel2-unsandboxed-"))
    try:
        (workdir / "program.py").write_text(source, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}
        process = subprocess.Popen([python(), "-I", "-S", "-B", "program.py"], cwd=workdir, env=env,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                                   preexec_fn=functools.partial(_limits, int(timeout) + 1, memory_bytes))
        try:
            process.wait(timeout=timeout)
            status = {"status": "passed" if process.returncode == 0 else "failed", "returncode": process.returncode}
        except subprocess.TimeoutExpired:
            status = {"status": "timeout"}
        finally:
            _kill_group(process.pid)  # anything the program left behind in its session
            process.wait()
        return status, NO_ISOLATION
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _limits(cpu_seconds: int, memory_bytes: int) -> None:
    """preexec_fn: runs in the child between fork and exec."""
    for limit, value in ((resource.RLIMIT_CPU, cpu_seconds), (resource.RLIMIT_AS, memory_bytes),
                         (resource.RLIMIT_FSIZE, 16 << 20), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(handle) -> str:
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - 4 * OUTPUT_CHARS))
    return handle.read().decode("utf-8", "replace")[-OUTPUT_CHARS:]
