"""Causal self-attention over a whole sequence: SDPA, or a block-causal kernel for CPU training.

On the CPU, torch's flash-attention backward is slow: at the benchmark shape (batch 8, 8 heads over
4 KV heads, 512 tokens, head dim 64, bf16) one layer's forward + backward took 76 ms, a third of
the whole training step. Written as plain matrix products over query blocks of 64 rows, each
block attending only to the keys at or before it, the same attention took 27-40 ms compiled and
61-77 ms eager (medians over several runs on a shared machine): the blocks skip the masked upper
triangle, and each block's scores stay small enough for the caches. The price is memory: like
any unfused attention it keeps each block's probabilities for the backward pass (half of batch x
heads x T^2 values), so it is used only up to BLOCKED_MAX_SEQ tokens, and only on the CPU, where
no fused kernel beats it. Results equal SDPA's
to rounding (fp32 outputs and gradients within 3e-7 relative; tests/test_attention.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

QUERY_BLOCK = 64
BLOCKED_MAX_SEQ = 1024


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """softmax(q k^T * scale + causal mask) v with queries and keys at the same positions.

    q: (batch, heads, seq, head_dim); k, v: (batch, kv_heads, seq, head_dim), kv_heads dividing
    heads (query head h reads KV head h // (heads / kv_heads), as in Llama).
    """
    seq = q.shape[2]
    if q.device.type == "cpu" and torch.is_grad_enabled() and QUERY_BLOCK < seq <= BLOCKED_MAX_SEQ:
        return block_causal_attention(q, k, v, scale)
    return F.scaled_dot_product_attention(q, k, v, is_causal=seq > 1, scale=scale,
                                          enable_gqa=k.shape[1] != q.shape[1])


def block_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
                           block: int = QUERY_BLOCK) -> torch.Tensor:
    batch, heads, seq, head_dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    scale = head_dim ** -0.5 if scale is None else scale
    # Scaling the queries first is cheaper (38 against 44 ms compiled at the benchmark shape) and
    # exact when the scale is a power of two (head_dim 64: 1/8); otherwise the fp32 scores are
    # scaled, as SDPA does, so bf16 queries are not rounded once more.
    scale_queries = math.frexp(scale)[0] == 0.5
    # (batch, kv_heads, group, seq, head_dim): the query heads that share one KV head side by side.
    grouped = (q * scale if scale_queries else q).view(batch, kv_heads, group, seq, head_dim)
    score_scale = 1.0 if scale_queries else scale
    positions = torch.arange(seq, device=q.device)
    outputs = []
    for start in range(0, seq, block):
        end = min(start + block, seq)
        rows = end - start
        queries = grouped[:, :, :, start:end].reshape(batch, kv_heads, group * rows, head_dim)
        scores = (queries @ k[:, :, :end].transpose(-1, -2)).view(batch, kv_heads, group, rows, end)
        future = positions[None, :end] > positions[start:end, None]
        scores = scores.float() if score_scale == 1.0 else scores.float() * score_scale
        probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1).to(q.dtype)
        out = probs.view(batch, kv_heads, group * rows, end) @ v[:, :, :end]
        outputs.append(out.view(batch, kv_heads, group, rows, head_dim))
    return torch.cat(outputs, dim=3).view(batch, heads, seq, head_dim)
