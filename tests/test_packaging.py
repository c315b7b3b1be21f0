"""What an install gives: every command loads (a broken one is an error, never a missing command),
and a wheel installed outside the source tree carries its bundled data and trains the default."""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import xmodel2.commands
from xmodel2.cli import COMMANDS, CommandLoadError, build_parser, main
from xmodel2.data.corpus import HELD_OUT_PARTS, TRAIN_PARTS

REPO = Path(__file__).resolve().parents[1]
WHEEL_SIZE_LIMIT = 12 * 2**20  # the bundled data is ~7 MB compressed; code adds well under 1 MB


def subcommand_names(parser) -> set[str]:
    return {name for action in parser._subparsers._group_actions for name in action.choices}


def test_every_command_loads():
    assert subcommand_names(build_parser()) == set(COMMANDS)


@pytest.fixture
def extra_command_folder(tmp_path, monkeypatch):
    """A folder searched for `xmodel2.commands.*` modules, as if more had been installed."""
    monkeypatch.setattr(xmodel2.commands, "__path__", [*xmodel2.commands.__path__, str(tmp_path)])
    importlib.invalidate_caches()
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("xmodel2.commands.broken_")]:
        del sys.modules[name]


@pytest.mark.parametrize("source, cause", [
    (None, "No module named 'xmodel2.commands.broken_missing'"),  # listed but not installed
    ("import xmodel2_no_such_dependency\n", "No module named 'xmodel2_no_such_dependency'"),
    ("HELP = 'x'\ndef add_arguments(parser:\n", "SyntaxError"),
])
def test_a_command_that_fails_to_import_is_an_error_naming_it(extra_command_folder, monkeypatch, capsys,
                                                              source, cause):
    module = "broken_missing" if source is None else "broken_module"
    if source is not None:
        (extra_command_folder / f"{module}.py").write_text(source, encoding="utf-8")
    monkeypatch.setitem(COMMANDS, "broken", module)
    with pytest.raises(CommandLoadError, match="'broken'") as caught:
        build_parser()
    assert cause in str(caught.value)
    assert main(["--help"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xmodel2: error: command 'broken'") and cause in err


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the working tree: a build inside the tree would leave build/
    behind, and stale files there could end up in the wheel."""
    pytest.importorskip("setuptools", minversion="70.1",
                        reason="building the wheel without build isolation needs setuptools >= 70.1")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--quiet", "-w", str(root / "dist"), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = (root / "dist").glob("xmodel2-*.whl")
    return built


def test_the_wheel_carries_the_bundled_data(wheel):
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    assert "xmodel2/configs/default.yaml" in names
    bundled = [f"corpus/{part}.jsonl.gz" for part in TRAIN_PARTS + HELD_OUT_PARTS]
    bundled += ["SOURCES.md", "eval/SOURCES.md", "eval/arc_easy.jsonl", "eval/gsm8k.task.json",
                "sft/WORDNET-LICENSE"]
    bundled += [f"sft/{name}" for name in json.loads(archive.read("xmodel2/bundled/sft/manifest.json"))["files"]]
    assert [name for name in bundled if f"xmodel2/bundled/{name}" not in names] == []
    assert wheel.stat().st_size < WHEEL_SIZE_LIMIT, wheel.stat().st_size


def test_an_installed_wheel_trains_the_default_outside_the_source_tree(wheel, tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The installed copy comes first; the editable install's path entry comes after it.
    env = {**os.environ, "PYTHONPATH": str(target)}

    def python(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=timeout)

    located = python("-c", "import xmodel2; print(xmodel2.__file__)")
    assert Path(located.stdout.strip()).is_relative_to(target), located.stdout + located.stderr
    # The embedded default, shrunk: a small tokenizer, four steps of 64-token sequences (two per
    # stage, so the smallest mixture share still fills a sequence), no sample or perplexity at the end.
    run = python("-m", "xmodel2", "pretrain", "--out", "run", "--no-progress", "--no-finish",
                 "--train.steps=4", "--stages.1.steps=2", "--train.log_every=1", "--data.seq_len=64",
                 "--data.validation_sequences=8", "--tokenizer.vocab_size=1024",
                 "--tokenizer.max_sentences=5000", timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = elsewhere / "run"
    assert Path(json.loads((out / "run_config.json").read_text())["base_dir"]).is_relative_to(target)
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "grad_norm" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in steps)
    assert all(r["mfu"] is None or 0 < r["mfu"] <= 1 for r in steps), steps  # against a measured peak
    assert all(r["peak_flops"] > 0 for r in steps)
    assert (out / "checkpoints" / "step-00000004").is_dir()
