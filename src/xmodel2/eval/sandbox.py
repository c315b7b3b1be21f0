"""Run untrusted Python (model-written code) in a locked-down subprocess.

Layers, outermost first; what is enforced depends on the machine, and `isolation()` says which:

1. a throwaway folder under the system temp dir as the working directory and HOME, removed after;
2. when `unshare` works (root, or user namespaces allowed): a fresh network namespace (no
   interfaces but a downed loopback, so no network at all); as root also a switch to the
   unprivileged user `nobody` (65534), so the kernel refuses writes to files it does not own
   and RLIMIT_NPROC applies;
3. resource limits: CPU seconds, address space, file size, open files, no core files, and
   RLIMIT_NPROC = 0 (no new processes; the kernel ignores it for root, hence layer 2);
4. a wall-clock timeout that kills the whole process group;
5. inside the interpreter (`sandbox_boot.py`, run with `python -I`), a permanent audit hook that
   refuses process creation, sockets, ctypes, and any write, delete, rename or permission change
   outside the folder.

Not enforced: reading files the user may read (the program can read the source tree); a program
that escapes the audit hook through a bug in CPython still meets the OS layers, which without
`unshare` are only the resource limits.
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

NOBODY = 65534
BOOT = Path(__file__).with_name("sandbox_boot.py")


@dataclass
class SandboxResult:
    status: str  # "passed" (exit 0), "failed" (nonzero exit), "timeout"
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def python() -> str:
    """The base interpreter: stdlib only, and reachable by `nobody` even when the venv is not."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


@functools.lru_cache(maxsize=None)
def isolation() -> tuple[str, ...]:
    """The `unshare` prefix this machine supports: network namespace (and `nobody` as root), or ()."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    if os.geteuid() == 0:
        candidates = [(unshare, "--net", "--setgid", str(NOBODY), "--setuid", str(NOBODY), "--"),
                      (unshare, "--net", "--")]
    else:
        candidates = [(unshare, "--user", "--net", "--")]
    for prefix in candidates:
        try:
            probe = subprocess.run([*prefix, python(), "-I", "-c", "pass"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


def _limits(cpu_seconds: int, memory_bytes: int) -> None:
    """preexec_fn: runs in the child between fork and exec."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def run_sandboxed(source: str, timeout: float = 10.0, memory_bytes: int = 1 << 30) -> SandboxResult:
    workdir = Path(tempfile.mkdtemp(prefix="xmodel2-sandbox-"))
    try:
        (workdir / "program.py").write_text(source, encoding="utf-8")
        shutil.copyfile(BOOT, workdir / "boot.py")
        prefix = isolation()
        if "--setuid" in prefix:
            for path in (workdir, workdir / "program.py", workdir / "boot.py"):
                os.chown(path, NOBODY, NOBODY)
        command = [*prefix, python(), "-I", "-B", "boot.py", "program.py"]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8"}
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                   preexec_fn=functools.partial(_limits, int(timeout) + 1, memory_bytes))
        try:
            out, err = process.communicate(timeout=timeout)
            status = "passed" if process.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            out, err = process.communicate()
            status = "timeout"
        finally:
            _kill_group(process.pid)  # anything the program left behind in its session
        return SandboxResult(status, process.returncode, out.decode("utf-8", "replace")[-4000:],
                             err.decode("utf-8", "replace")[-4000:], time.monotonic() - started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
