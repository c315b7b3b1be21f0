"""Causal self-attention over a whole sequence: SDPA, or a block-causal kernel for CPU training.

On the CPU, torch's flash-attention backward is slow: at the benchmark shape (batch 8, 8 heads over
4 KV heads, 512 tokens, head dim 64, bf16) one layer's forward + backward took 76 ms, a third of
the whole training step. Written as plain matrix products over query blocks of 64 rows, each
block attending only to the keys at or before it, the same attention took 27-40 ms compiled and
61-77 ms eager (medians over several runs on a shared machine): the blocks skip the masked upper
triangle, and each block's scores stay small enough for the caches. The price is memory: like
any unfused attention it keeps each block's probabilities for the backward pass (half of batch x
heads x T^2 values), so it is used only up to BLOCKED_MAX_SEQ tokens, and only on the CPU, where
no fused kernel beats it. Results equal SDPA's to rounding (fp32 outputs and gradients within
3e-7 relative; tests/test_attention.py).

Compiled models trace the plain blocked ops, which inductor fuses well. Eager training uses
`BlockCausalAttention`, the same blocks with a hand-written backward: the whole eager training
step took 1.67 s instead of 1.86 s at the benchmark shape, and 0.351 s instead of 0.385 s for the
embedded default (nano, 16 x 256 tokens), interleaved medians in one process. Under compile it
was no faster than the plain ops (1.52-1.61 against 1.46-1.62 s), so it is not used there.
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
        if torch.compiler.is_compiling():
            return block_causal_attention(q, k, v, scale)  # plain ops: inductor fuses them
        return BlockCausalAttention.apply(q, k, v, scale)
    return F.scaled_dot_product_attention(q, k, v, is_causal=seq > 1, scale=scale,
                                          enable_gqa=k.shape[1] != q.shape[1])


def block_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
                           block: int = QUERY_BLOCK) -> torch.Tensor:
    batch, heads, seq, head_dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    scale, scale_queries = _softmax_scale(scale, head_dim)
    # (batch, kv_heads, group, seq, head_dim): the query heads that share one KV head side by side.
    grouped = (q * scale if scale_queries else q).view(batch, kv_heads, group, seq, head_dim)
    score_scale = 1.0 if scale_queries else scale
    positions = torch.arange(seq, device=q.device)
    outputs = []
    for start, end in _blocks(seq, block):
        rows = end - start
        queries = grouped[:, :, :, start:end].reshape(batch, kv_heads, group * rows, head_dim)
        scores = (queries @ k[:, :, :end].transpose(-1, -2)).view(batch, kv_heads, group, rows, end)
        future = positions[None, :end] > positions[start:end, None]
        scores = scores.float() if score_scale == 1.0 else scores.float() * score_scale
        probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1).to(q.dtype)
        out = probs.view(batch, kv_heads, group * rows, end) @ v[:, :, :end]
        outputs.append(out.view(batch, kv_heads, group, rows, head_dim))
    return torch.cat(outputs, dim=3).view(batch, heads, seq, head_dim)


class BlockCausalAttention(torch.autograd.Function):
    """`block_causal_attention` for eager training, with a hand-written backward.

    Autograd's own backward of the blocked formulation pads every block's key and value
    gradients to full length and adds them (fills and adds over (batch, kv_heads, seq,
    head_dim) per block), masks whole score blocks twice and keeps both the fp32 and the
    low-precision probabilities. Here only the diagonal sub-block is masked, only the
    probabilities in the compute dtype are kept, the softmax backward is one fused kernel, and
    key/value gradients accumulate (in fp32) into their prefixes only.
    Under autocast the inputs are cast once to the autocast dtype, where the plain formulation
    casts them at every block's matmul; the values are the same.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
                block: int = QUERY_BLOCK) -> torch.Tensor:
        device = q.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else q.dtype
        batch, heads, seq, head_dim = q.shape
        kv_heads = k.shape[1]
        group = heads // kv_heads
        scale, scale_queries = _softmax_scale(scale, head_dim)
        with torch.autocast(device, enabled=False):
            queries = (q * scale if scale_queries else q).to(dtype).view(batch, kv_heads, group, seq, head_dim)
            keys = k.to(dtype).flatten(0, 1).contiguous()  # (batch * kv_heads, seq, head_dim)
            values = v.to(dtype).flatten(0, 1).contiguous()
            out = torch.empty(batch, kv_heads, group, seq, head_dim, dtype=dtype, device=q.device)
            probs = []
            for start, end in _blocks(seq, block):
                rows = end - start
                block_queries = queries[:, :, :, start:end].reshape(batch * kv_heads, group * rows, head_dim)
                scores = torch.bmm(block_queries, keys[:, :end].transpose(1, 2))
                scores = scores.view(batch * kv_heads, group, rows, end)
                if not scale_queries:
                    scores = scores.float() * scale
                # Only the diagonal block holds future keys; all earlier keys are visible.
                scores[..., start:end].masked_fill_(_future(rows, q.device), float("-inf"))
                # fp32 inside the kernel, rounded once to the compute dtype (no fp32 copies)
                block_probs = torch.softmax(scores, dim=-1).to(dtype)
                block_probs = block_probs.view(batch * kv_heads, group * rows, end)
                out[:, :, :, start:end] = torch.bmm(block_probs, values[:, :end]).view(
                    batch, kv_heads, group, rows, head_dim)
                probs.append(block_probs)
        out = out.view(batch, heads, seq, head_dim)
        ctx.scale, ctx.scale_queries, ctx.block = scale, scale_queries, block
        ctx.save_for_backward(queries, keys, values, *probs)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        queries, keys, values, *probs = ctx.saved_tensors
        batch, kv_heads, group, seq, head_dim = queries.shape
        dtype = queries.dtype
        with torch.autocast(grad_out.device.type, enabled=False):
            grad_out_grouped = grad_out.to(dtype).reshape(batch, kv_heads, group, seq, head_dim)
            grad_queries = torch.empty_like(queries)
            # Key and value gradients sum over every later query block: in fp32, as autograd
            # sums the gradients of the per-block casts of fp32 keys.
            grad_keys = torch.zeros(keys.shape, dtype=torch.float32, device=keys.device)
            grad_values = torch.zeros_like(grad_keys)
            for (start, end), block_probs in zip(_blocks(seq, ctx.block), probs):
                rows = end - start
                flat = (batch * kv_heads, group * rows, head_dim)
                block_grad_out = grad_out_grouped[:, :, :, start:end].reshape(flat)
                block_queries = queries[:, :, :, start:end].reshape(flat)
                grad_values[:, :end] += torch.bmm(block_probs.transpose(1, 2), block_grad_out)
                grad_probs = torch.bmm(block_grad_out, values[:, :end].transpose(1, 2))
                # dS = P * (dP - rowsum(dP * P)) in one fused kernel (fp32 inside); masked
                # entries have P = 0, so their gradient is 0. The softmax scale is applied to
                # the small query/key gradients below instead of to dS.
                grad_scores = torch._softmax_backward_data(grad_probs, block_probs, -1, dtype)
                grad_queries[:, :, :, start:end] = torch.bmm(grad_scores, keys[:, :end]).view(
                    batch, kv_heads, group, rows, head_dim)
                grad_keys[:, :end] += torch.bmm(grad_scores.transpose(1, 2), block_queries)
            # Scores were (queries * scale) @ keys with the scale on the queries (scale_queries) or
            # on the scores: either way d/dq carries the scale, and d/dk carries it in the latter.
            grad_q = grad_queries.view(batch, kv_heads * group, seq, head_dim) * ctx.scale
            if not ctx.scale_queries:
                grad_keys *= ctx.scale
        shape = (batch, kv_heads, seq, head_dim)
        return grad_q, grad_keys.view(shape), grad_values.view(shape), None, None


def _softmax_scale(scale: float | None, head_dim: int) -> tuple[float, bool]:
    """(the scale, whether to apply it to the queries rather than to the fp32 scores).

    Scaling the queries first is cheaper (38 against 44 ms compiled at the benchmark shape) and
    exact when the scale is a power of two (head_dim 64: 1/8); otherwise the fp32 scores are
    scaled, as SDPA does, so bf16 queries are not rounded once more.
    """
    scale = head_dim ** -0.5 if scale is None else scale
    return scale, math.frexp(scale)[0] == 0.5


def _blocks(seq: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(start + block, seq)) for start in range(0, seq, block)]


def _future(rows: int, device: torch.device) -> torch.Tensor:
    """(rows, rows), True above the diagonal: the keys after each query of a diagonal block."""
    return torch.ones(rows, rows, dtype=torch.bool, device=device).triu(1)
