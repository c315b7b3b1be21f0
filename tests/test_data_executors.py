"""`xmodel2 prepare` on datatrove's Slurm and Ray executors: the same shard bytes as the pool."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from xmodel2.cli import main
from xmodel2.data import corpus_file
from xmodel2.data.prepare import prepare, staging_dir
from xmodel2.tokenizer.train import MIN_LEARNED_PIECES, RESERVED_PIECES, train_tokenizer

SHARD_FILES = ("tokens.bin", "documents.npy", "meta.json")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer([corpus_file("math")], out, vocab_size=RESERVED_PIECES + MIN_LEARNED_PIECES + 200,
                    max_sentences=5_000)
    return out


@pytest.fixture(scope="module")
def three_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("three")
    with gzip.open(corpus_file("math"), "rt", encoding="utf-8") as handle:
        docs = [json.loads(line)["text"] for _, line in zip(range(60), handle)]
    for i in range(3):
        (folder / f"{i}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[i * 20:i * 20 + 20]))
    return folder


@pytest.fixture(scope="module")
def pool_shard(tokenizer, three_files, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("pool") / "shard"
    prepare([str(three_files)], str(tokenizer), out, workers=1, progress=False)
    return {name: (out / name).read_bytes() for name in SHARD_FILES}


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in SHARD_FILES}


def test_slurm_dry_run_scripts_run_as_slurm_would_give_the_pool_shard(tokenizer, three_files, pool_shard,
                                                                      tmp_path, capsys, monkeypatch):
    out = tmp_path / "shard"
    code = main(["prepare", str(three_files), "--tokenizer", str(tokenizer), "--out", str(out),
                 "--executor", "slurm", "--partition", "cpu-long", "--time", "2:30:00", "--tasks", "3",
                 "--cpus-per-task", "2", "--slurm-dry-run"])
    assert code == 0 and "nothing submitted" in capsys.readouterr().out and not out.exists()
    logs = staging_dir(out) / "logs"
    script = (logs / "launch_script.slurm").read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, re.M))
    assert (directives["partition"], directives["time"], directives["array"], directives["cpus-per-task"]) == \
        ("cpu-long", "2:30:00", "0-2", "2")
    task_line = script.strip().splitlines()[-1]
    assert task_line == f"srun -l -n 1 launch_pickled_pipeline {logs / 'executor.pik'}"
    join = (logs / "join.slurm").read_text()
    assert "--executor local" in join and f"--out {out}" in join and "#SBATCH --partition=cpu-long" in join

    # Run the array's tasks as Slurm would (its task id in the environment, its scontrol on PATH),
    # then the join job's script.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho \"$3\"\n")  # `scontrol show hostnames NODELIST`
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_NODELIST": "node1"}
    for task in range(3):
        command = task_line.removeprefix("srun -l -n 1 ").split()
        subprocess.run([str(Path(sys.executable).parent / command[0]), *command[1:]], check=True,
                       env={**env, "SLURM_ARRAY_TASK_ID": str(task)}, capture_output=True)
    assert len(list(staging_dir(out).glob("part-*.bin"))) == 3
    joined = subprocess.run(["bash", str(logs / "join.slurm")], env=env, capture_output=True, text=True)
    assert joined.returncode == 0, joined.stderr
    assert "3 chunks reused" in joined.stdout  # nothing encoded again: the join job only joined
    assert shard_bytes(out) == pool_shard and not staging_dir(out).exists()


def test_slurm_without_sbatch_is_one_line_error(tokenizer, three_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    code = main(["prepare", str(three_files), "--tokenizer", str(tokenizer), "--out", str(tmp_path / "s"),
                 "--executor", "slurm", "--partition", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no `sbatch` on PATH" in err
    assert not staging_dir(tmp_path / "s").exists()


def test_slurm_needs_a_partition(tokenizer, three_files, tmp_path, capsys):
    code = main(["prepare", str(three_files), "--tokenizer", str(tokenizer), "--out", str(tmp_path / "s"),
                 "--executor", "slurm", "--slurm-dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--partition" in err


@pytest.mark.slow
def test_ray_local_cluster_gives_the_pool_shard(tokenizer, three_files, pool_shard, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "shard"
    result = prepare([str(three_files)], str(tokenizer), out, workers=2, executor="ray", tasks=3, progress=False)
    assert result.encoded_chunks == 3 and not staging_dir(out).exists()
    assert shard_bytes(out) == pool_shard
