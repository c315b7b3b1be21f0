"""The block-causal CPU attention is SDPA's causal attention, in outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

from xmodel2.model.attention import BlockCausalAttention, block_causal_attention, causal_attention
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model


@pytest.mark.parametrize("heads,kv_heads,seq,block,head_dim,scale", [
    (8, 4, 160, 64, 64, None),  # GQA, a last block shorter; 1/8 scales the queries
    (4, 4, 128, 32, 32, None),  # plain multi-head; 1/sqrt(32) scales the fp32 scores
    (6, 2, 97, 16, 32, 0.3),  # odd length, μP-style explicit scale
])
@pytest.mark.parametrize("implementation", ["plain", "hand-written backward"])
def test_block_causal_attention_equals_sdpa_with_grads(heads, kv_heads, seq, block, head_dim, scale,
                                                       implementation):
    blocked = (block_causal_attention if implementation == "plain"
               else lambda q, k, v, scale, block: BlockCausalAttention.apply(q, k, v, scale, block))
    gen = torch.Generator().manual_seed(seq)
    q = torch.randn(2, heads, seq, head_dim, generator=gen, requires_grad=True)
    k = torch.randn(2, kv_heads, seq, head_dim, generator=gen, requires_grad=True)
    v = torch.randn(2, kv_heads, seq, head_dim, generator=gen, requires_grad=True)
    grad = torch.randn(2, heads, seq, head_dim, generator=gen)
    results = []
    for attend in (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                          enable_gqa=heads != kv_heads),
                   lambda: blocked(q, k, v, scale, block)):
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
    assert causal_attention(q, k, v, None).grad_fn.name() == "BlockCausalAttentionBackward"  # not SDPA


def test_hand_written_backward_equals_autograd_under_bf16_autocast():
    """The eager function computes what the plain blocked ops compute under autocast: the same
    forward values, and gradients equal to bf16 rounding (the plain ops sum key gradients
    padded to full length, the function accumulates them into prefixes)."""
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(2, 8, 200, 64, generator=gen, requires_grad=True)
    k = torch.randn(2, 4, 200, 64, generator=gen, requires_grad=True)
    v = torch.randn(2, 4, 200, 64, generator=gen, requires_grad=True)
    grad = torch.randn(2, 8, 200, 64, generator=gen)
    results = []
    for attend in (block_causal_attention, BlockCausalAttention.apply):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attend(q, k, v, None)
        out.backward(grad)
        results.append([out.detach()] + [t.grad.clone() for t in (q, k, v)])
        q.grad = k.grad = v.grad = None
    (want_out, *want_grads), (got_out, *got_grads) = results
    assert got_out.dtype == want_out.dtype == torch.bfloat16
    assert torch.equal(got_out, want_out)
    for got, want in zip(got_grads, want_grads):
        assert got.dtype == torch.float32
        assert (got - want).norm() / want.norm() < 1e-2
