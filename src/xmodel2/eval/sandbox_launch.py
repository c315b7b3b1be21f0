"""Trusted launcher: isolates one untrusted Python program with Linux namespaces, then runs it.

Started by `sandbox.run_sandboxed` as `python -I -S -B sandbox_launch.py TIMEOUT MEMORY TMPFS STATUS_FD`
with the program on stdin (its length, a newline, the source; the caller then keeps stdin open as
a lifeline: closing it, or dying, ends the sandbox). It runs as the caller, before any untrusted code, and is the
only place that holds privileges. Standard library only (it runs on the base interpreter) and
ctypes for what Python < 3.12 lacks: unshare, mount, umount2, pivot_root and prctl.

Two processes:

- the supervisor (this process) enters fresh user (unless it is root), PID, network, IPC and UTS
  namespaces, forks, and watches the clock: at the deadline it kills the child, the init of the
  new PID namespace, and the kernel then kills every process in that namespace. It reports on
  STATUS_FD, one `key text` line each: the isolation used and how the program ended
  (`outcome exit N|signal N|timeout|abandoned`), or `setup_error` with what the kernel refused;
- the child becomes PID 1 of the new namespace, builds a private mount namespace whose root is a
  read-only tmpfs holding read-only bind mounts of what the interpreter needs, a fresh read-only
  /proc, four device nodes and one writable size-limited tmpfs at /tmp (the working folder), drops
  to uid/gid 65534 with no capabilities, no new privileges and resource limits, and execs the
  interpreter on the program.

The network namespace has only a downed loopback; the IPC and UTS namespaces hide the host's
System V objects and host name; the PID namespace hides every host process.
"""

import ctypes
import os
import resource
import select
import sys

NOBODY = 65534
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SIGKILL = 9  # the signal module would cost 10 ms of imports per run
# statvfs flags with the same values as the MS_ flags; a user namespace may not clear them on remount
KEPT_FLAGS = (os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME
              | os.ST_RELATIME)
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
SYSTEM_TREES = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")  # faster library lookup; local time
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
MAX_PROCESSES = 32
MAX_FILE_BYTES = 16 << 20

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


class SetupError(Exception):
    """Isolation could not be set up; the message names what the kernel refused."""


def _check(result: int, what: str) -> None:
    if result != 0:
        raise SetupError(f"{what} ({os.strerror(ctypes.get_errno())})")


def _unshare(flag: int, what: str) -> None:
    _check(libc.unshare(flag), f"{what} are not permitted")


def _mount(source, target: str, fstype, flags: int, data=None) -> None:
    encode = lambda text: None if text is None else os.fsencode(text)  # noqa: E731
    _check(libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)),
           f"mount of {target} failed")


def _maps(path: str, inner_id: int) -> bool:
    """Whether the id map at `path` (/proc/self/uid_map or gid_map) gives `inner_id` an identity."""
    with open(path) as handle:
        for line in handle:
            first, _, count = (int(x) for x in line.split())
            if first <= inner_id < first + count:
                return True
    return False


# --- supervisor ---------------------------------------------------------------------------------


def enter_namespaces() -> list[str]:
    """Namespaces for the child; the PID namespace takes effect at the next fork.

    Real root switches to uid 65534 later; anyone else (or root of a namespace that cannot map
    65534) gets a user namespace in which its own uid is seen as 65534: unprivileged outside, and
    without capabilities once the interpreter is exec'd.
    """
    names = []
    as_root = os.geteuid() == 0 and _maps("/proc/self/uid_map", NOBODY) and _maps("/proc/self/gid_map", NOBODY)
    if not as_root:
        uid, gid = os.geteuid(), os.getegid()
        _unshare(CLONE_NEWUSER, "user namespaces")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{NOBODY} {uid} 1"), ("gid_map", f"{NOBODY} {gid} 1")):
            try:
                with open(f"/proc/self/{name}", "w") as handle:  # setgroups first: the kernel requires it
                    handle.write(text)
            except OSError as exc:
                raise SetupError(f"user namespaces: writing /proc/self/{name} failed ({exc.strerror})") from None
        names.append("user")
    for flag, name, what in ((CLONE_NEWPID, "pid", "PID namespaces"), (CLONE_NEWNET, "net", "network namespaces"),
                             (CLONE_NEWIPC, "ipc", "IPC namespaces"), (CLONE_NEWUTS, "uts", "UTS namespaces")):
        _unshare(flag, what)
        names.append(name)
    return names


def supervise(child: int, timeout: float, lifeline: int) -> str:
    """Wait for the child until the deadline, or until the caller closes its end of `lifeline`
    (it gave up, or died). SIGKILL to a namespace's init ends every process in the namespace."""
    pidfd = os.pidfd_open(child)
    ready, _, _ = select.select([pidfd, lifeline], [], [], timeout)
    ended = pidfd in ready
    if not ended:
        os.kill(child, SIGKILL)
    _, status = os.waitpid(child, 0)
    if not ended:
        return "timeout" if not ready else "abandoned"
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


def main() -> None:
    timeout = float(sys.argv[1])
    memory_bytes, tmpfs_bytes, status_fd = (int(arg) for arg in sys.argv[2:5])
    os.set_inheritable(status_fd, False)  # the program must not get it
    source = _read_source(0)
    try:
        names = enter_namespaces()
    except (SetupError, OSError) as exc:
        return _report(status_fd, "setup_error", str(exc))
    notes_read, notes_write = os.pipe()  # both close on exec: EOF means the program started
    child = os.fork()
    if child == 0:
        os.close(notes_read)
        try:
            become_sandbox(source, memory_bytes, tmpfs_bytes, int(timeout) + 1, notes_write)
        except BaseException as exc:  # noqa: BLE001 - anything here must reach the supervisor
            _report(notes_write, "setup_error", str(exc))
        os._exit(127)
    os.close(notes_write)
    notes = [line.partition(" ") for line in _read_all(notes_read).splitlines()]
    errors = [text for key, _, text in notes if key == "setup_error"]
    if errors:
        os.waitpid(child, 0)
        return _report(status_fd, "setup_error", errors[0])
    outcome = supervise(child, timeout, 0)
    names = [name for name in ("user", "mount", "pid", "net", "ipc", "uts") if name in names or name == "mount"]
    parts = [f"namespaces: {','.join(names)}", "read-only root", *[text for key, _, text in notes if key == "note"],
             f"tmpfs {tmpfs_bytes >> 20} MiB", f"uid {NOBODY}"]
    _report(status_fd, "isolation", "; ".join(parts))
    _report(status_fd, "outcome", outcome)


def _read_source(fd: int) -> bytes:
    """The caller writes the length, a newline, the program, and then keeps the pipe open."""
    data = b""
    while b"\n" not in data:
        data += os.read(fd, 64) or _fail("the program's length is missing")
    length, _, source = data.partition(b"\n")
    while len(source) < int(length):
        source += os.read(fd, int(length) - len(source)) or _fail("the program is cut short")
    return source


def _fail(message: str):
    raise SystemExit(f"sandbox launcher: {message}")


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


def _report(fd: int, key: str, text: str) -> None:
    os.write(fd, f"{key} {' '.join(text.split())}\n".encode())


# --- child: PID 1 of the new namespace ----------------------------------------------------------


def become_sandbox(source: bytes, memory_bytes: int, tmpfs_bytes: int, cpu_seconds: int, notes_fd: int) -> None:
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # should the supervisor die during the setup
    os.umask(0o022)  # mount points made here must be traversable by uid 65534
    _unshare(CLONE_NEWNS, "mount namespaces")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here propagates to the host
    _pivot_to_empty_root()
    for path in _system_paths():
        _expose(path)
    for device in DEVICES:
        _expose(device, MS_NOSUID | MS_NOEXEC)
    if not _mount_proc():
        _report(notes_fd, "note", "no /proc (not permitted)")
    os.mkdir("/tmp")
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={tmpfs_bytes},mode=1777")
    with open("/tmp/program.py", "wb") as handle:
        handle.write(source)
    _check(libc.umount2(b"/oldroot", MNT_DETACH), "detaching the host's root failed")
    os.rmdir("/oldroot")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir("/tmp")
    _drop_privileges()
    _limit(memory_bytes, cpu_seconds)
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # after the uid change, which clears it
    stdin = os.open("/dev/null", os.O_RDONLY)
    os.dup2(stdin, 0)
    os.execve(sys.executable, [sys.executable, "-I", "-S", "-B", "/tmp/program.py"], ENV)


def _pivot_to_empty_root() -> None:
    """Make a small tmpfs the root; the host's root stays reachable at /oldroot until detached.

    The tmpfs is mounted over /tmp only inside this namespace; pivot_root moves it away from
    there, so a host path under /tmp is still visible below /oldroot for the bind mounts.
    """
    machine = os.uname().machine
    if machine not in PIVOT_ROOT:
        raise SetupError(f"pivot_root: unknown system call number on {machine}")
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    os.mkdir("/tmp/oldroot")
    _check(libc.syscall(PIVOT_ROOT[machine], b"/tmp", b"/tmp/oldroot"), "pivot_root failed")
    os.chdir("/")


def _system_paths() -> list[str]:
    """What the interpreter needs: the system trees, its own prefix and two files of /etc."""
    own = {os.path.realpath(p) for p in (sys.prefix, sys.exec_prefix, os.path.dirname(sys.executable))}
    paths = []
    for path in sorted({*SYSTEM_TREES, *own, *SYSTEM_FILES}):
        if os.path.lexists("/oldroot" + path) and not any(path.startswith(p + "/") for p in paths):
            paths.append(path)
    return paths


def _expose(path: str, flags: int = MS_NOSUID | MS_NODEV) -> None:
    """Show the host's `path` at the same place, read-only. A symlink is copied as one (/bin ->
    usr/bin on merged-/usr systems); its target resolves inside the new root."""
    source = "/oldroot" + path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.islink(source):
        os.symlink(os.readlink(source), path)
        return
    if os.path.isdir(source):
        os.mkdir(path)
    else:
        open(path, "w").close()
    _mount(source, path, None, MS_BIND | MS_REC)
    for point in _mount_points_under(path):  # a recursive bind brings submounts, read-write
        kept = os.statvfs(point).f_flag & KEPT_FLAGS
        _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags | kept)


def _mount_points_under(path: str) -> list[str]:
    points = []
    with open("/oldroot/proc/self/mountinfo") as handle:  # paths as seen from the new root
        for line in handle:
            point = _unescape(line.split()[4])
            if point == path or point.startswith(path + "/"):
                points.append(point)
    return points


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def _mount_proc() -> bool:
    """A read-only /proc of the new PID namespace: only the sandbox's own processes, nothing to
    write through. A user namespace may be refused this (when the host's /proc is partly hidden);
    then there is no /proc at all, which the report says."""
    os.mkdir("/proc")
    try:
        _mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except SetupError:
        return False
    return True


def _drop_privileges() -> None:
    """As root: uid/gid 65534 and no groups, which clears every capability. In a user namespace
    the ids already are 65534 and exec clears the capabilities (a non-root uid keeps none)."""
    if os.getuid() == 0:
        os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS failed")


def _limit(memory_bytes: int, cpu_seconds: int) -> None:
    """Set after the uid change, which checks uid 65534's process count against RLIMIT_NPROC and
    would make the exec fail if uid 65534 already had more processes than the limit elsewhere."""
    for limit, value in ((resource.RLIMIT_CPU, cpu_seconds), (resource.RLIMIT_AS, memory_bytes),
                         (resource.RLIMIT_FSIZE, MAX_FILE_BYTES), (resource.RLIMIT_NOFILE, 64),
                         (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, MAX_PROCESSES)):
        resource.setrlimit(limit, (value, value))


if __name__ == "__main__":
    main()
