"""Inference weight formats: fp32, bf16, and weight-only int8 for fast decoding.

Decoding one sequence is bound by reading the weights: each new token reads every matrix once
(`xmodel2 bench`'s default shape is 153 MB per token in fp32, which both we and transformers read
at 12-13 GB/s on the 2-core CPU). Storing the matrices as int8 with one scale per output row cuts
the bytes four-fold, and torch's `_weight_int8pack_mm` CPU kernel multiplies bf16 activations
by them without materialising a dequantised copy; there the benchmark decodes 4-5x faster than
fp32. Activations, norms, the KV cache and the embedding lookup stay bf16.

Int8 rounding moves logits a little. On SmolLM2-135M-Instruct and 1,024 tokens of the bundled
wiki-test text, perplexity is 13.03 in fp32, 13.08 in bf16 and 13.00 in int8, and the teacher-
forced top-1 token equals fp32's at 95.2% of positions in int8 (96.6% in plain bf16: near-ties
flip under any rounding); tests/test_quantize.py measures both. It is an inference format only:
a converted model cannot be trained or saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xmodel2.model.transformer import Transformer

WEIGHT_FORMATS = ("fp32", "bf16", "int8")
# `_weight_int8pack_mm` handles rows one by one: from about 32 rows (prefill) dequantising to bf16
# and running the dense matmul is faster (measured on the benchmark's 32,000 x 512 head: 1 row
# 0.61 against 2.30 ms, 16 rows 2.35 against 2.81, 32 rows 4.09 against 3.58, 64 rows 7.71 against 4.71).
FUSED_KERNEL_MAX_ROWS = 32


class Int8Linear(nn.Module):
    """`y = (x @ q.T) * scale`: q int8 (out, in), one bf16 scale per output row (max|w| / 127)."""

    def __init__(self, weight: torch.Tensor, activation_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        w = weight.detach().float()
        # Round with the scale as stored (bf16), so dequantisation error stays within half a step.
        scales = (w.abs().amax(dim=1).clamp(min=1e-12) / 127.0).to(activation_dtype)
        quantized = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("qweight", quantized)
        self.register_buffer("scales", scales)
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if (flat.device.type == "cpu" and flat.dtype == self.scales.dtype
                and flat.shape[0] < FUSED_KERNEL_MAX_ROWS):
            out = torch._weight_int8pack_mm(flat.contiguous(), self.qweight, self.scales)
        else:
            # Prefill, or no fused kernel here: dequantise on the fly and use the dense matmul.
            out = F.linear(flat, self.qweight.to(flat.dtype)) * self.scales.to(flat.dtype)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight"


def convert_weights(model: Transformer, weight_format: str) -> Transformer:
    """Convert `model` in place to `weight_format` for inference and return it.

    "fp32" and "bf16" cast every tensor. "int8" replaces every linear layer and the LM head (an
    int8 copy of the embedding, when tied) with `Int8Linear`, quantised from the weights as
    given, then casts the rest (embedding, norms) to bf16.
    """
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"weight format must be one of {', '.join(WEIGHT_FORMATS)}, got {weight_format!r}")
    if weight_format == "fp32":
        return model.float()
    if weight_format == "int8":
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, Int8Linear(child.weight))
        if model.lm_head is None:
            model.lm_head = Int8Linear(model.model.embed_tokens.weight)
        model.eval().requires_grad_(False)
    return model.to(torch.bfloat16)  # int8 buffers are not floating point and stay int8
