"""`xmodel2 pretrain --dry-run`: the plan of a run, checked for N ranks, with nothing trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from xmodel2.cli import main
from xmodel2.train.runconfig import PACKAGE_CONFIGS

RECIPE = PACKAGE_CONFIGS / "xmodel2-1.2b.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_1p2b_recipe_plans_the_reports_tokens_and_lists_its_placeholder_paths(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", str(RECIPE), "--dry-run", "--nproc", "64", "--out", str(out)]) == 2
    text = capsys.readouterr().out
    stable = 5_000 * 512 * 4096 + 378_800 * 960 * 4096  # the ramp: about 2M, then about 4M tokens
    decay = 20_000 * 960 * 4096
    assert abs(stable - 1.5e12) / 1.5e12 < 1e-4
    assert f"({stable:,});" in text and f"({decay:,});" in text
    assert f"total: 403,800 steps, 1.579T tokens ({stable + decay:,})" in text
    assert "8 per rank" in text and "15 per rank" in text
    # The WSD schedule: peak 0.01 through the stable stage, four half-lives of decay after it.
    assert "LR 0.01 at step 383,800 -> 0.0006251 at step 403,799" in text
    assert "after steps 2,000, 4,000, 6,000, ..., 400,000, 402,000, 403,800" in text
    assert "data.sources.fineweb-edu.inputs.0:" in text and "data/fineweb-edu not found" in text
    assert "unchecked until prepared" in text
    png = out / "mixture.png"
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert not (out / "checkpoints").exists()


def test_a_batch_that_does_not_split_over_the_ranks_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["pretrain", "--dry-run", "--nproc", "3", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "train.batch_size" in err and "16 sequences" in err and "3 ranks" in err
    assert not out.exists()


def test_a_missing_input_path_names_its_config_key_and_exits_2(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["pretrain", "--dry-run", "--out", str(out),
                 f"--data.sources.math.inputs=[{tmp_path / 'nowhere.jsonl'}]"])
    assert code == 2
    text = capsys.readouterr().out
    problems = text.split("problems (1;")[1].splitlines()[1:]
    assert problems == [f"  data.sources.math.inputs.0: {tmp_path / 'nowhere.jsonl'} not found"]
    assert "total: 600 steps" in text  # the plan is printed all the same


def test_the_embedded_default_plans_trains_nothing_and_draws_its_mixtures(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "total: 600 steps, 2.458M tokens (2,457,600)" in text
    assert "stable     steps 0-479 (480 steps)" in text and "decay      steps 480-599 (120 steps)" in text
    assert text.rstrip().endswith("no problems: the run can start as configured")
    assert (out / "mixture.png").read_bytes().startswith(PNG_SIGNATURE)
    # Nothing of a run: no tokenizer, shards, checkpoints or metrics; the folder stays usable by
    # the real run (marked as a run folder, so pretrain takes it).
    assert not {"checkpoints", "tokenizer", "data", "metrics.jsonl"} & {p.name for p in out.iterdir()}
    assert main(["pretrain", "--dry-run", "--out", str(out), "--train.steps=10"]) == 0


def test_the_plan_is_refused_for_a_folder_pretrain_would_refuse(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run\n")
    assert main(["pretrain", "--dry-run", "--out", str(foreign)]) == 2
    assert "pretrain uses only a new or empty folder" in capsys.readouterr().err
    assert not (foreign / "mixture.png").exists()


def test_prepared_shards_are_checked_against_each_stage_budget(tmp_path, capsys, proxy_cache):
    shard = next(proxy_cache.glob("vocab*/shards/math"))
    tokens = json.loads((shard / "meta.json").read_text())["tokens"]
    out = tmp_path / "run"
    shutil.copytree(shard, out / "data" / "math")
    assert main(["pretrain", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"math: {tokens:,} tokens in {out / 'data' / 'math'}" in text
    # Enough steps that the stable stage's 5% of math needs more than 4 passes over the shard.
    steps = int(4 * tokens / (0.05 * 0.8 * 16 * 256)) + 100
    assert main(["pretrain", "--dry-run", "--out", str(out), f"--train.steps={steps}"]) == 2
    text = capsys.readouterr().out
    assert "stages.stable.mixture.math:" in text and "more than max_repeats=4" in text
    assert Path(out / "mixture.png").is_file()


def test_nproc_without_dry_run_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--nproc", "4", "--out", str(out)]) == 2
    assert "--nproc 4: only --dry-run takes it" in capsys.readouterr().err
    assert not out.exists()
