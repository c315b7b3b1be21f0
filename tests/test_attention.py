"""The block-causal CPU attention is SDPA's causal attention, in outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

from xmodel2.model.attention import block_causal_attention, causal_attention
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model


@pytest.mark.parametrize("heads,kv_heads,seq,block,head_dim,scale", [
    (8, 4, 160, 64, 64, None),  # GQA, a last block shorter; 1/8 scales the queries
    (4, 4, 128, 32, 32, None),  # plain multi-head; 1/sqrt(32) scales the fp32 scores
    (6, 2, 97, 16, 32, 0.3),  # odd length, μP-style explicit scale
])
def test_block_causal_attention_equals_sdpa_with_grads(heads, kv_heads, seq, block, head_dim, scale):
    gen = torch.Generator().manual_seed(seq)
    q = torch.randn(2, heads, seq, head_dim, generator=gen, requires_grad=True)
    k = torch.randn(2, kv_heads, seq, head_dim, generator=gen, requires_grad=True)
    v = torch.randn(2, kv_heads, seq, head_dim, generator=gen, requires_grad=True)
    grad = torch.randn(2, heads, seq, head_dim, generator=gen)
    results = []
    for attend in (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                          enable_gqa=heads != kv_heads),
                   lambda: block_causal_attention(q, k, v, scale, block=block)):
        out = attend()
        out.backward(grad)
        results.append([out.detach()] + [t.grad.clone() for t in (q, k, v)])
        q.grad = k.grad = v.grad = None
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_training_forward_takes_the_blocked_path_and_keeps_the_loss():
    config = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                         num_heads=4, num_kv_heads=2, mup={"dim_model_base": 32})
    model = build_model(config, seed=1)
    ids = torch.randint(0, 128, (2, 150), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # SDPA
        want = model(ids)
    got = model(ids)  # grad enabled, 150 tokens on the CPU: the blocked kernel
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    q = torch.randn(1, 4, 150, 16, requires_grad=True)
    k = v = torch.randn(1, 2, 150, 16)
    assert "Attention" not in causal_attention(q, k, v, None).grad_fn.name()  # not the SDPA kernel
