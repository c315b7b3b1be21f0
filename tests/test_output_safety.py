"""No command destroys data: folder kinds, outputs apart from inputs, one run per run folder, and a
resume that falls back past a checkpoint a power loss left corrupt.

Each refusal goes through `xmodel2.cli.main` and asserts exit status 2, one line on stderr naming
the path, and that the protected files are byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from run_fixtures import pretrain, slice_jsonl
from xmodel2.cli import main
from xmodel2.fileio import OWNER_MARK
from xmodel2.train.checkpoint import latest_checkpoint, list_checkpoints


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety")
    slice_jsonl("wiki-train", root / "wiki.jsonl", 300)
    config = root / "tiny.yaml"
    config.write_text(textwrap.dedent("""\
        model: {hidden_size: 32, intermediate_size: 64, num_layers: 1, num_heads: 2,
                num_kv_heads: 1, max_position_embeddings: 32, mup: {dim_model_base: 32}}
        tokenizer: {vocab_size: 700, max_sentences: 5000}
        data:
          seq_len: 16
          workers: 1
          sources:
            wiki: {inputs: [wiki.jsonl]}
        train: {steps: 4, lr: 0.01, warmup_steps: 1, batch_size: 4, micro_batch_size: 4,
                precision: fp32, log_every: 1, seed: 0}
        stages:
          - {name: stable, mixture: {wiki: 1.0}}
        checkpoint: {every: 2, keep: 0}
        """))
    assert pretrain(config, root / "warm") == 0  # checkpoints at steps 2 and 4
    return config


@pytest.fixture
def run_dir(config_path, tmp_path) -> Path:
    """A copy of the finished warm run (tokenizer, shards, checkpoints 2 and 4)."""
    out = tmp_path / "run"
    shutil.copytree(config_path.parent / "warm", out, symlinks=True)
    return out


def digests(folder: Path) -> dict[str, str]:
    """Every file under `folder` (or the file itself) by relative path -> sha256."""
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def refused(argv: list[str], capsys, *must_name: Path) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xmodel2: error: "), err
    for path in must_name:
        assert str(path) in lines[0], (path, lines[0])
    return lines[0]


# ---- 3: folder kinds --------------------------------------------------------------------------------

def test_import_and_export_never_replace_a_training_checkpoint(run_dir, tmp_path, capsys):
    checkpoint = latest_checkpoint(run_dir)
    model = tmp_path / "model"
    assert main(["export", str(checkpoint), "--format", "xmodel", "--out", str(model)]) == 0
    before = digests(checkpoint)

    line = refused(["import", str(model), "--out", str(checkpoint)], capsys, checkpoint)
    assert "holds a training checkpoint" in line and "import writes a model folder" in line
    line = refused(["export", str(model), "--out", str(checkpoint)], capsys, checkpoint)
    assert "holds a training checkpoint" in line
    assert digests(checkpoint) == before
    assert latest_checkpoint(run_dir) == checkpoint

    # A checkpoint marked before marks named a kind is recognised by its training state.
    (checkpoint / OWNER_MARK).write_text("written by xmodel2; this folder may be replaced by it\n")
    before = digests(checkpoint)
    line = refused(["import", str(model), "--out", str(checkpoint)], capsys, checkpoint)
    assert "holds a training checkpoint" in line
    assert digests(checkpoint) == before


def test_a_command_never_replaces_its_own_input(run_dir, tmp_path, capsys):
    checkpoint = latest_checkpoint(run_dir)
    model = tmp_path / "model"
    assert main(["export", str(checkpoint), "--format", "xmodel", "--out", str(model)]) == 0
    protected = {**digests(checkpoint), **digests(model)}

    refused(["export", str(checkpoint), "--out", str(checkpoint)], capsys, checkpoint)
    refused(["import", str(model), "--out", str(model)], capsys, model)
    refused(["export", str(model), "--format", "xmodel", "--out", str(model)], capsys, model)
    refused(["export", str(model), "--out", str(model / "inside")], capsys, model)
    link = tmp_path / "link"
    link.symlink_to(model, target_is_directory=True)
    line = refused(["import", str(link), "--out", str(model)], capsys, model)
    assert "would overwrite the input" in line
    assert {**digests(checkpoint), **digests(model)} == protected
    # A model folder is still replaced by an import of another model: same kind, not an input.
    assert main(["import", str(checkpoint), "--out", str(model)]) == 0


def test_folders_not_written_by_xmodel2_are_refused(tmp_path, run_dir, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    before = digests(home)
    line = refused(["export", str(latest_checkpoint(run_dir)), "--out", str(home)], capsys, home)
    assert "not written by xmodel2" in line
    assert digests(home) == before


# ---- 5: pretrain --out an unrelated folder -----------------------------------------------------------

def test_pretrain_refuses_a_foreign_non_empty_folder(config_path, tmp_path, capsys):
    foreign = tmp_path / "experiment"
    foreign.mkdir()
    (foreign / "metrics.jsonl").write_text('{"step": 1, "accuracy": 0.93}\n')
    (foreign / "run_config.json").write_text('{"mine": true}\n')
    (foreign / "notes.txt").write_text("do not lose\n")
    before = digests(foreign)
    line = refused(["pretrain", str(config_path), "--out", str(foreign), "--no-progress", "--no-finish"],
                   capsys, foreign)
    assert "not written by xmodel2" in line
    assert digests(foreign) == before and sorted(p.name for p in foreign.iterdir()) == [
        "metrics.jsonl", "notes.txt", "run_config.json"]


def test_pretrain_refuses_a_model_folder_and_marks_its_run(config_path, run_dir, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["export", str(latest_checkpoint(run_dir)), "--format", "xmodel", "--out", str(model)]) == 0
    before = digests(model)
    line = refused(["pretrain", str(config_path), "--out", str(model), "--no-progress", "--no-finish"],
                   capsys, model)
    assert "holds a model folder" in line
    assert digests(model) == before
    assert json.loads((run_dir / OWNER_MARK).read_text()) == {"kind": "run", "version": 1}


def test_a_run_from_before_run_marks_still_resumes(config_path, run_dir, capsys):
    (run_dir / OWNER_MARK).unlink()  # runs were not marked before this change
    assert pretrain(config_path, run_dir, "--train.steps=6") == 0
    assert "resuming from" in capsys.readouterr().err
    assert latest_checkpoint(run_dir).name == "step-00000006"


# ---- 6: outputs apart from inputs --------------------------------------------------------------------

def test_dedup_report_never_overwrites_an_input(tmp_path, capsys):
    removed = tmp_path / "X.removed.jsonl"
    removed.write_text('{"text": "one two three"}\n{"text": "one two three"}\n')
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "four five six"}\n')
    before = {**digests(removed), **digests(folder)}

    line = refused(["dedup", str(removed), "--out", str(tmp_path / "X.jsonl")], capsys, removed)
    assert "removal report" in line
    refused(["dedup", str(folder), "--out", str(folder / "clean.jsonl")], capsys, folder)
    refused(["dedup", str(folder / "a.jsonl"), "--out", str(folder / "a.jsonl")], capsys, folder / "a.jsonl")
    assert {**digests(removed), **digests(folder)} == before
    assert not (tmp_path / "X.jsonl").exists() and sorted(p.name for p in folder.iterdir()) == ["a.jsonl"]


def test_prepare_tokenizer_and_eval_outputs_stay_apart_from_their_inputs(run_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("one two three\n")
    completions = tmp_path / "c.jsonl"
    completions.write_text('{"task_id": "HumanEval/0", "completion": "    return False\\n"}\n')
    tokenizer = run_dir / "tokenizer"
    before = {**digests(corpus), **digests(completions), **digests(tokenizer)}

    refused(["tokenizer", "train", "--input", str(corpus / "a.txt"), "--out", str(corpus / "a.txt"),
             "--vocab-size", "1000"], capsys, corpus / "a.txt")
    refused(["tokenizer", "train", "--input", str(corpus), "--out", str(corpus / "tok"),
             "--vocab-size", "1000"], capsys, corpus)
    refused(["prepare", str(corpus), "--tokenizer", str(tokenizer), "--out", str(corpus / "shards")],
            capsys, corpus)
    refused(["prepare", str(corpus), "--tokenizer", str(tokenizer), "--out", str(tokenizer)], capsys, tokenizer)
    refused(["eval", "--tasks", "humaneval", "--completions", str(completions), "--output", str(completions)],
            capsys, completions)
    refused(["eval", str(tokenizer), "--tasks", "wikitext", "--output", str(tokenizer / "r.json")],
            capsys, tokenizer)
    assert {**digests(corpus), **digests(completions), **digests(tokenizer)} == before
    assert sorted(p.name for p in corpus.iterdir()) == ["a.txt"]


# ---- 4: one run per run folder -----------------------------------------------------------------------

def pretrain_process(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xmodel2", "pretrain", str(config), "--out", str(out),
                             "--no-progress", "--no-finish", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, what: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def lock_holder(out: Path) -> int | None:
    try:
        return json.loads((out / ".lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_second_run_on_the_same_folder_is_refused(config_path, run_dir, capsys):
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()
    first = pretrain_process(config_path, run_dir, "--train.steps=60", "--checkpoint.every=60")
    wait_for(lambda: lock_holder(run_dir) == first.pid, first, "the first run took the lock")
    # The second run is this test's own process: refused before it imports or prepares anything
    # more, so the first is surely still training when it is checked.
    line = refused(["pretrain", str(config_path), "--out", str(run_dir), "--no-progress", "--no-finish",
                    "--train.steps=60"], capsys, run_dir)
    assert first.poll() is None, "the first run ended before the second one was checked"
    assert f"pid {first.pid}" in line
    assert first.wait(timeout=600) == 0, first.stderr.read()
    assert latest_checkpoint(run_dir).name == "step-00000060"
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # one writer: no interleaved rows
    assert (run_dir / "metrics.jsonl").read_bytes().startswith(metrics_before)


def test_the_lock_of_a_killed_run_does_not_block_its_resume(config_path, run_dir, capsys):
    killed = pretrain_process(config_path, run_dir, "--train.steps=40", "--checkpoint.every=4")
    wait_for(lambda: latest_checkpoint(run_dir).name >= "step-00000008", killed, "a checkpoint at step 8")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert lock_holder(run_dir) == killed.pid  # the lock file stays behind, naming the dead run
    interrupted = latest_checkpoint(run_dir)
    assert interrupted.name < "step-00000040"
    capsys.readouterr()
    assert pretrain(config_path, run_dir, "--train.steps=40", "--checkpoint.every=4") == 0
    assert f"resuming from {interrupted} " in capsys.readouterr().err
    assert latest_checkpoint(run_dir).name == "step-00000040"


# ---- 7: falling back past a corrupt checkpoint ---------------------------------------------------------

def test_resume_skips_a_truncated_newest_checkpoint(config_path, run_dir, capsys):
    newest, previous = list_checkpoints(run_dir)[-1], list_checkpoints(run_dir)[-2]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a power loss mid-write
    capsys.readouterr()
    assert pretrain(config_path, run_dir, "--train.steps=6") == 0
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "skipping checkpoint" in line]
    assert len(skipped) == 1 and str(newest) in skipped[0] and "model.safetensors" in skipped[0]
    assert skipped[0].endswith(f"resuming from {previous.name}")
    assert f"resuming from {previous} (step 2" in err
    assert [p.name for p in list_checkpoints(run_dir)][-2:] == ["step-00000004", "step-00000006"]


def test_no_loadable_checkpoint_is_one_line_naming_the_newest(config_path, run_dir, capsys):
    for checkpoint in list_checkpoints(run_dir):
        (checkpoint / "optimizer.pt").write_bytes(b"")
    newest = latest_checkpoint(run_dir)
    line = pretrain_error(capsys, config_path, run_dir, "--train.steps=6")
    assert str(newest) in line and "optimizer.pt" in line


def pretrain_error(capsys, config: Path, out: Path, *extra: str) -> str:
    """The one error line of a pretrain that fails after its progress lines (stage tables)."""
    capsys.readouterr()
    assert pretrain(config, out, *extra) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("xmodel2: error: ")]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize("content, expected", [(b"", "empty file"), (b"PK\x03\x04 cut short", "unreadable")],
                         ids=["empty", "truncated"])
def test_bad_optimizer_file_is_one_line_naming_it(config_path, run_dir, tmp_path, capsys, content, expected):
    branch_from = list_checkpoints(run_dir)[0]
    (branch_from / "optimizer.pt").write_bytes(content)
    branch = tmp_path / "branch"  # the run's prepared tokenizer and shards, no checkpoints
    branch.mkdir()
    for part in ("tokenizer", "data"):
        shutil.copytree(run_dir / part, branch / part)
    line = pretrain_error(capsys, config_path, branch, "--init-from", str(branch_from))
    assert line.startswith(f"xmodel2: error: {branch_from / 'optimizer.pt'}: ") and expected in line
