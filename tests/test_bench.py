"""`xmodel2 bench`: the matmul floor counts exactly the FLOPs of the MFU formula, and the command
runs end to end on a tiny shape and writes its JSON."""

import json

import pytest

from xmodel2 import bench
from xmodel2.cli import main


def test_floor_shapes_account_for_every_training_flop():
    shape = bench.BenchShape()
    config = shape.config()
    total = 0
    for kind, dims, count in bench.step_matmul_shapes(config, shape.batch, shape.seq):
        if kind == "mm":
            m, k, n = dims
            total += 2 * m * k * n * count
        else:
            b, m, k, n = dims
            total += 2 * b * m * k * n * count
    assert total == bench.training_flops_per_step(config, shape.batch, shape.seq)


def test_bench_command_tiny_shape(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "bench.json"
    code = main(["bench", "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                 "--ffn", "160", "--vocab", "300", "--seq", "32", "--batch", "2", "--repeats", "1",
                 "--no-compile", "--prompt", "8", "--new-tokens", "4", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["matmul_floor_seconds"] > 0
    assert {"ours eager", "transformers eager"} <= result["training"].keys()
    assert all(v > 0 for v in result["ratios"].values())


def test_bench_bad_shape_exit_2(tmp_path, capsys):
    assert main(["bench", "--hidden", "100", "--heads", "3", "--out", str(tmp_path / "b.json")]) == 2
    assert "num_heads" in capsys.readouterr().err
