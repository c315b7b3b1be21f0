"""The Xmodel-2 decoder: math only.

A pre-RMSNorm Llama decoder (GQA attention with RoPE, SwiGLU MLP, no biases, tied embeddings)
with μP's three forward multipliers, each applied exactly once:

  1. the embedding output is multiplied by `scale_emb`;
  2. each residual branch (attention and MLP separately) by `scale_depth / sqrt(num_layers)`
     (Xmodel-2.5 gives the MLP branch its own scale, `mup.mlp_scale_depth`);
  5. the final hidden state is divided by m = hidden / dim_model_base before the LM head.

(Operations 3 and 4, init and per-group learning rates, live in `mup.py`.) With μP off every
multiplier is 1 and is skipped, so the function is exactly `transformers.LlamaForCausalLM`.
Parameter names equal the Llama ones, so `state_dict()` is a Llama checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xmodel2.model.attention import causal_attention
from xmodel2.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 (bf16 variance loses too much), then cast back before the gain,
        # in the same order as Llama so fp32 results agree to rounding.
        # F.rms_norm is one fused kernel where torch has one (measured ~15% faster on CPU).
        normalized = F.rms_norm(x.float(), self.weight.shape, eps=self.eps)
        return self.weight * normalized.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions, in Llama's half-split (rotate_half) layout."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (batch, heads, seq, head_dim); cos/sin: (batch, seq, head_dim)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Preallocated keys and values for every layer: (batch, kv_heads, max_len, head_dim)."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        shape = (batch_size, config.num_kv_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.length = 0  # positions filled so far (the same for every layer)
        self.max_len = max_len
        # Static mode (compiled decoding): new K/V go to these slots and attention always spans
        # the whole buffer under a key mask, so every step has the same shapes.
        self.write_slots: torch.Tensor | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.write_slots is not None:
            self.keys[layer].index_copy_(2, self.write_slots, k)
            self.values[layer].index_copy_(2, self.write_slots, v)
            return self.keys[layer], self.values[layer]
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > max_len {self.max_len}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_heads, config.num_kv_heads, config.head_dim)
        self.scale = config.attention_softmax_scale
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
        if mask is None and (cache is None or cache.length == 0):
            # Plain causal attention: queries and keys start at the same position.
            out = causal_attention(q, k, v, self.scale)
        else:
            # Grouped-query attention inside SDPA: no expanded copies of K/V (measured ~10%
            # faster on CPU than repeat_interleave for fwd+bwd).
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                                 enable_gqa=self.num_kv_heads != self.num_heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, f, bias=False)
        self.up_proj = nn.Linear(h, f, bias=False)
        self.down_proj = nn.Linear(f, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        # μP operation 2, one multiplier per branch (equal unless mup.mlp_scale_depth is set)
        self.attention_residual_multiplier = config.residual_multiplier
        self.mlp_residual_multiplier = config.mlp_residual_multiplier

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        x = x + _scaled(attn, self.attention_residual_multiplier)
        mlp = self.mlp(self.post_attention_layernorm(x))
        return x + _scaled(mlp, self.mlp_residual_multiplier)


class DecoderBody(nn.Module):
    """Embedding, layers and final norm: `model.*` in Llama's tensor names."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.embedding_multiplier = config.embedding_multiplier  # μP operation 1


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderBody(config)
        self.lm_head = None if config.tie_embeddings else nn.Linear(
            config.hidden_size, config.vocab_size, bias=False)
        self.logit_multiplier = config.logit_multiplier  # μP operation 5

    @property
    def output_weight(self) -> torch.Tensor:
        """The LM head's matrix (for training: a model converted to int8 has none)."""
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def activation_dtype(self) -> torch.dtype:
        """The dtype hidden states, logits and the KV cache take: the embedding table's."""
        return self.model.embed_tokens.weight.dtype

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                      attention_mask: torch.Tensor | None = None,
                      cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm hidden states, (batch, seq, hidden).

        `attention_mask` (batch, keys) marks real tokens with 1 and padding with 0, over all keys
        seen so far (cached plus new); `position_ids` default to consecutive positions after the
        cache. Without a mask and cache, attention is plainly causal.
        """
        batch, seq = input_ids.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + seq, device=input_ids.device).expand(batch, seq)
        mask = None
        if attention_mask is not None or (past > 0 and seq > 1):
            mask = _attention_mask(attention_mask, batch, seq, past, input_ids.device)
        hidden = self._body(input_ids, position_ids, mask, cache)
        if cache is not None:
            cache.length += seq
        return hidden

    def decode_step(self, input_ids: torch.Tensor, position_ids: torch.Tensor, key_mask: torch.Tensor,
                    cache: KVCache) -> torch.Tensor:
        """Last-position logits for new tokens written at `cache.write_slots`.

        Every shape is fixed by the cache size, so `torch.compile` builds this once: attention
        spans the whole cache and `key_mask` (batch, max_len) says which slots hold real tokens.
        """
        hidden = self._body(input_ids, position_ids, key_mask[:, None, None, :], cache)
        return self.logits(hidden[:, -1])

    def _body(self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None,
              cache: KVCache | None) -> torch.Tensor:
        body = self.model
        x = _scaled(body.embed_tokens(input_ids), body.embedding_multiplier)
        cos, sin = body.rotary(position_ids, x.dtype)
        for layer in body.layers:
            x = layer(x, cos, sin, mask, cache)
        return body.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = _scaled(hidden, self.logit_multiplier)
        if self.lm_head is None:
            return F.linear(hidden, self.model.embed_tokens.weight)
        return self.lm_head(hidden)  # an nn.Linear, or an inference-format head (quantize.py)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                output_hidden: bool = False) -> torch.Tensor:
        """Logits, or with `output_hidden` the final hidden states (the loss computes logits in
        chunks itself; going through forward lets `torch.compile(model)` cover the body)."""
        hidden = self.hidden_states(input_ids, position_ids, attention_mask, cache)
        return hidden if output_hidden else self.logits(hidden)


def _scaled(x: torch.Tensor, multiplier: float) -> torch.Tensor:
    # A multiplier of exactly 1 is skipped, so μP-off is bit-identical to plain Llama.
    return x if multiplier == 1.0 else x * multiplier


def _attention_mask(padding: torch.Tensor | None, batch: int, seq: int, past: int,
                    device: torch.device) -> torch.Tensor:
    """Boolean (batch, 1, seq, past+seq) mask: causal over absolute positions, minus padding."""
    total = past + seq
    query_pos = torch.arange(past, total, device=device)[:, None]
    key_pos = torch.arange(total, device=device)[None, :]
    mask = (key_pos <= query_pos)[None, None].expand(batch, 1, seq, total)
    if padding is not None:
        mask = mask & padding[:, None, None, :total].bool()
        # A fully padded query row (left padding) would give NaN; let it see itself instead.
        mask = mask | _self_positions(batch, seq, past, device)
    return mask


def _self_positions(batch: int, seq: int, past: int, device: torch.device) -> torch.Tensor:
    eye = torch.zeros(seq, past + seq, dtype=torch.bool, device=device)
    eye[torch.arange(seq), torch.arange(past, past + seq)] = True
    return eye[None, None].expand(batch, 1, seq, past + seq)
