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
    assert result["memory_copy_bandwidth"] > 1e8  # any machine copies more than 100 MB/s
    for side in result["generation"].values():
        assert side["decode_bytes_per_token"] > 0 and 0 < side["bandwidth_fraction"]


def test_decode_bytes_count_each_weight_once_and_skip_lookup_only_tables():
    import copy

    import torch

    from xmodel2.model.quantize import convert_weights

    config = bench.BenchShape(hidden=64, layers=2, heads=4, kv_heads=2, ffn=160, vocab=300).config()
    ours, theirs = bench.build_pair(config)
    params = sum(p.numel() for p in ours.parameters())  # tied: the table is also the LM head
    buffers = sum(b.nbytes for b in ours.buffers())  # the rotary frequencies
    assert bench.weight_bytes_per_step(ours) == 4 * params + buffers
    assert abs(bench.weight_bytes_per_step(theirs) - bench.weight_bytes_per_step(ours)) < 1024
    int8 = convert_weights(copy.deepcopy(ours), "int8")
    matrices = sum(m.qweight.numel() for m in int8.modules() if hasattr(m, "qweight"))
    # int8 matrices (the LM head an int8 copy of the table) plus scales and bf16 norms; the bf16
    # table itself is only looked up
    linear = sum(m.weight.numel() for m in ours.modules() if isinstance(m, torch.nn.Linear))
    assert matrices == linear + 300 * 64
    assert matrices < bench.weight_bytes_per_step(int8) < matrices + 4 * 300 + 64 * 100
    kv = bench.kv_bytes_per_row(config, 100, torch.float32)
    assert kv == 2 * 2 * 2 * 16 * 100 * 4
    assert bench.decode_bytes_per_token(ours, config, 8, 100, torch.float32) == (4 * params + buffers) / 8 + kv


def test_bench_bad_shape_exit_2(tmp_path, capsys):
    assert main(["bench", "--hidden", "100", "--heads", "3", "--out", str(tmp_path / "b.json")]) == 2
    assert "num_heads" in capsys.readouterr().err
