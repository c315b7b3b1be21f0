"""The FLOP formula used for MFU, checked against hand counts and a measured matmul count."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from xmodel2.model.config import ModelConfig, preset
from xmodel2.model.folder import build_model
from xmodel2.train import flops


def test_matmul_parameters_xl_by_hand():
    c = preset("xl")
    per_layer = 1536 * 64 * (2 * 24 + 2 * 8) + 3 * 1536 * 3840
    assert flops.matmul_parameters(c) == 48 * per_layer + 65280 * 1536
    assert flops.training_flops_per_token(c, 4096) == (
        6 * flops.matmul_parameters(c) + 12 * 48 * 24 * 64 * 4096)


def test_forward_formula_matches_torch_flop_counter():
    # torch's FLOP counter sees every linear layer (it does not count the CPU SDPA kernel), so
    # it checks the matmul term; the attention term is 2 products of (seq x d) by (d x seq).
    c = ModelConfig(vocab_size=512, hidden_size=128, intermediate_size=320, num_layers=2,
                    num_heads=4, num_kv_heads=2)
    model = build_model(c)
    seq = 64
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 512, (1, seq)))
    assert counter.get_total_flops() == 2 * flops.matmul_parameters(c) * seq
    attention = 2 * (2 * seq * seq * c.head_dim) * c.num_heads * c.num_layers
    assert flops.forward_flops_per_token(c, seq) * seq == counter.get_total_flops() + attention


def test_mfu():
    assert flops.mfu(1000, 1e6, 1e10) == 0.1
    assert flops.mfu(1000, 1e6, 0) == 0.0
