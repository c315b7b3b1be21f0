"""The layering contract (.importlinter) holds for the package, and it catches an import that breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))

pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (pip install -e '.[dev]')")


def lint(package_parent: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([LINT, "--config", str(config), "--no-cache"], cwd=package_parent, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_package_keeps_the_contract():
    result = lint(ROOT / "src", ROOT / ".importlinter")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module, line, broken", [
    ("data/probe.py", "def f():\n    from xmodel2.train import loss\n", "xmodel2.data is not allowed to import xmodel2.train"),
    ("eval/probe.py", "from xmodel2.agents import tasks\n", "xmodel2.eval is not allowed to import xmodel2.agents"),
    ("ratio_search/probe.py", "from xmodel2 import cli\n", "xmodel2.ratio_search is not allowed to import xmodel2.cli"),
    ("agents/probe.py", "from xmodel2.windtunnel import arms\n",
     "xmodel2.agents is not allowed to import xmodel2.windtunnel"),
])
def test_an_upward_or_sideways_import_breaks_it(tmp_path, module, line, broken):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "xmodel2", copy / "xmodel2", ignore=shutil.ignore_patterns("__pycache__", "bundled"))
    (copy / "xmodel2" / module).write_text(line)
    result = lint(copy, ROOT / ".importlinter")
    assert result.returncode != 0
    assert broken in result.stdout
