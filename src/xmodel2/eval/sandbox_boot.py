"""Runs inside the sandbox before the untrusted program (copied next to it, run as a script).

It installs an audit hook that cannot be removed: no process creation, no sockets, no ctypes,
and no writing, deleting, renaming or permission changes outside the sandbox folder. Then it runs
the program as __main__. The hook is the in-process layer; the OS layers (no network namespace,
unprivileged user, resource limits) are set up by `sandbox.run_sandboxed`.
"""

import os
import sys

ROOT = os.path.realpath(os.getcwd())
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
BLOCKED = {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.kill",
           "os.killpg", "subprocess.Popen", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
           "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
           "os.setuid", "os.chroot", "signal.pthread_kill", "resource.setrlimit"}
BLOCKED_IMPORTS = {"_ctypes", "ctypes", "_posixsubprocess", "_socket", "socket"}
PATH_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
               "os.truncate", "os.utime", "os.rename", "shutil.rmtree", "os.chflags", "os.removexattr",
               "os.setxattr", "shutil.copyfile", "shutil.move"}


def _inside(path) -> bool:
    if isinstance(path, int):
        return True  # an already open file descriptor
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return real == ROOT or real.startswith(ROOT + os.sep)


def _writes(mode, flags) -> bool:
    if isinstance(mode, str) and any(ch in mode for ch in "wax+"):
        return True
    return isinstance(flags, int) and flags & WRITE_FLAGS != 0


def _hook(event, args):
    if event in BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args and args[0] in BLOCKED_IMPORTS:
        raise PermissionError(f"sandbox: import of {args[0]} is not allowed")
    if event == "open" and len(args) >= 3 and _writes(args[1], args[2]) and not _inside(args[0]):
        raise PermissionError(f"sandbox: writing {args[0]!r} outside the sandbox is not allowed")
    if event in PATH_EVENTS and not all(_inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
        raise PermissionError(f"sandbox: {event} outside the sandbox is not allowed")


def main() -> None:
    program = sys.argv[1]
    with open(program, encoding="utf-8") as handle:
        source = handle.read()
    code = compile(source, program, "exec")
    sys.addaudithook(_hook)
    exec(code, {"__name__": "__main__", "__file__": program, "__builtins__": __builtins__})


main()
