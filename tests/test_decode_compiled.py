"""The compiled fixed-shape decode path gives exactly the eager KV-cache tokens."""

import torch

from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model
from xmodel2.model.generate import generate_ids


def test_compiled_decode_equals_eager_with_padding_and_sampling():
    config = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                         num_heads=4, num_kv_heads=2, mup={"dim_model_base": 32})
    model = build_model(config, seed=5).eval()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 256, (9,), generator=gen).tolist(),
               torch.randint(0, 256, (4,), generator=gen).tolist()]
    eager = generate_ids(model, prompts, 12)
    assert generate_ids(model, prompts, 12, compile=True) == eager
    sampled = generate_ids(model, prompts, 12, temperature=0.8, top_k=20, seed=3)
    assert generate_ids(model, prompts, 12, temperature=0.8, top_k=20, seed=3, compile=True) == sampled
