"""Export: our folder as a plain `LlamaForCausalLM` (μP folded into the weights) or as a native copy.

Each forward multiplier of μP is a scalar on a linear path, so it moves into a weight:

* embedding × scale_emb            -> `embed_tokens` × scale_emb;
* residual branches × scale/√L     -> `o_proj` × the attention branch's, `down_proj` × the MLP
                                     branch's (they end each branch);
* logits = W (h / m) × output_scale -> `lm_head` = W × output_scale / m;
* attention scale s (1/head_dim for Xmodel-2.5 with μP) -> `q_proj` × s·√head_dim (Llama applies
  1/√head_dim itself).

Tied embeddings stay tied only when the embedding and LM-head factors agree; otherwise the head
is written out (untied). A multiplier of exactly 1 leaves its tensor untouched, so a plain Llama
goes through import and export bit-exact.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from xmodel2.errors import UserError
from xmodel2.interop.hf import Checkpoint, read_checkpoint, write_folder, write_native_folder
from xmodel2.model.config import ModelConfig, llama_keys

FORMATS = ("llama", "xmodel")


def fold_mup(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Plain-Llama tensors computing the same function; returns (tensors, tied)."""
    out = dict(tensors)
    embedding = tensors["model.embed_tokens.weight"]
    head = tensors.get("lm_head.weight", embedding)
    out["model.embed_tokens.weight"] = _scaled(embedding, config.embedding_multiplier)
    branch_factors = {"self_attn.o_proj.weight": config.residual_multiplier,
                      "mlp.down_proj.weight": config.mlp_residual_multiplier,
                      "self_attn.q_proj.weight": query_factor(config)}
    for i in range(config.num_layers):
        for name, factor in branch_factors.items():
            key = f"model.layers.{i}.{name}"
            out[key] = _scaled(tensors[key], factor)
    tied = config.tie_embeddings and config.embedding_multiplier == config.logit_multiplier
    if tied:
        out.pop("lm_head.weight", None)
    else:
        out["lm_head.weight"] = _scaled(head, config.logit_multiplier)
    return out, tied


def query_factor(config: ModelConfig) -> float:
    """What q_proj is multiplied by so that Llama's fixed 1/sqrt(head_dim) gives the model's scale.

    Exactly 1 for the Llama scale (no rounding through sqrt), so such tensors stay bit-exact.
    """
    if config.attention_scale == "inv_sqrt_head_dim":
        return 1.0
    return config.attention_softmax_scale * math.sqrt(config.head_dim)


def llama_config(config: ModelConfig, tied: bool) -> dict:
    """A config.json that transformers' own LlamaForCausalLM reads (no remote code)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **llama_keys(config),
            "rope_scaling": None, "tie_word_embeddings": tied,
            "initializer_range": config.mup.init_std}


def export_model(src: str | Path, out: str | Path, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    src = Path(src)
    if src.suffix == ".gguf" or not src.is_dir():
        raise UserError(f"{src}: model folder not found (export reads a folder written by xmodel2)")
    with tempfile.TemporaryDirectory() as work:
        checkpoint = read_checkpoint(src, work)
        if fmt == "xmodel":
            return write_native_folder(out, checkpoint)
        return write_llama_folder(out, checkpoint)


def write_llama_folder(out: str | Path, checkpoint: Checkpoint) -> Path:
    config = checkpoint.config
    tensors, tied = fold_mup(config, checkpoint.tensors)
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
                  "pad_token_id": config.pad_token_id, "do_sample": False}
    return write_folder(out, llama_config(config, tied), tensors, generation, checkpoint.tokenizer_dir)


def _scaled(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    # Multiply in fp32 and store in the tensor's own dtype; a factor of 1 keeps the very tensor.
    if factor == 1.0:
        return tensor
    return (tensor.float() * factor).to(tensor.dtype)
