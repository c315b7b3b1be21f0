"""FLOP counts for MFU, as pure functions.

Training FLOPs per token follow the PaLM appendix-B convention (also nanoGPT's and torchtitan's):

    6 * N_matmul + 12 * L * H * d_head * T

N_matmul counts the weights that take part in matrix multiplications: every linear layer of every
block plus the output projection (vocab x hidden, tied or not); the embedding lookup is a gather
and costs nothing. The second term is attention's QK^T and AV products over a context of T tokens,
counted without the causal discount (as PaLM does), forward 2 FLOPs per multiply-add, backward 2x
forward. Forward-only (inference) is a third of both terms.
"""

from __future__ import annotations

from xmodel2.model.config import ModelConfig


def matmul_parameters(config: ModelConfig) -> int:
    h, f, d = config.hidden_size, config.intermediate_size, config.head_dim
    attention = h * d * (2 * config.num_heads + 2 * config.num_kv_heads)
    mlp = 3 * h * f
    return config.num_layers * (attention + mlp) + config.vocab_size * h


def attention_flops_per_token(config: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs of QK^T and AV for one token attending over `seq_len` positions."""
    return 4 * config.num_layers * config.num_heads * config.head_dim * seq_len


def training_flops_per_token(config: ModelConfig, seq_len: int) -> int:
    return 6 * matmul_parameters(config) + 3 * attention_flops_per_token(config, seq_len)


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> int:
    return 2 * matmul_parameters(config) + attention_flops_per_token(config, seq_len)


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware's peak FLOP/s."""
    return tokens_per_second * flops_per_token / peak_flops if peak_flops > 0 else 0.0
