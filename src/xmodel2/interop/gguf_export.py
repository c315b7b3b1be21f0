"""Export a model folder as one GGUF file for llama.cpp and Ollama (`xmodel2 export --format gguf`).

The weights are those of the plain-Llama export (`llama.fold_mup`: every μP multiplier folded
in), renamed to llama.cpp's tensor names. llama.cpp applies rotary embeddings to interleaved
pairs of each head's dimensions, where Hugging Face rotates its two halves, so q and k rows are
reordered per head (as llama.cpp's own converter does; readers of GGUF undo it).

`--dtype f16` stores matrices in float16; `q8_0` stores them as llama.cpp's 8-bit blocks (32
weights sharing one float16 scale). Norm weights stay float32 in both, as llama.cpp expects; a
matrix whose rows do not split into 32-wide blocks stays float16.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from xmodel2.errors import UserError
from xmodel2.interop.gguf_vocab import UNKNOWN, Vocab, read_vocab
from xmodel2.interop.hf import read_checkpoint
from xmodel2.interop.llama import fold_mup
from xmodel2.model.config import ModelConfig
from xmodel2.model.generate import default_add_bos
from xmodel2.tokenizer import load_tokenizer

DTYPES = ("f16", "q8_0")
Q8_BLOCK = 32

# Llama names (ours, per layer) -> llama.cpp's
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
MODEL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def export_gguf(src: str | Path, out: str | Path, dtype: str = "f16") -> Path:
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: GGUF export writes one of {', '.join(DTYPES)}")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("GGUF export needs the gguf package: pip install 'xmodel2[interop]'") from None
    src, out = Path(src), Path(out)
    with tempfile.TemporaryDirectory() as work:
        checkpoint = read_checkpoint(src, work)
        if checkpoint.tokenizer_dir is None:
            raise UserError(f"{src}: no tokenizer files; a GGUF file must carry its tokenizer")
        vocab = read_vocab(checkpoint.tokenizer_dir)
        vocab.add_bos = default_add_bos(load_tokenizer(checkpoint.tokenizer_dir))
        config = checkpoint.config
        vocab.padded_to(config.vocab_size, str(src))
        tensors, _tied = fold_mup(config, checkpoint.tensors)
        with _atomic_path(out) as tmp:
            write_gguf(tmp, config, gguf_tensors(config, tensors), vocab, dtype, name=src.name)
    return out


def gguf_tensors(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """llama.cpp's names, q and k rows reordered for its rotary layout; a tied head is left out."""
    out = {}
    for name, gguf_name in MODEL_TENSORS.items():
        if name in tensors:
            out[gguf_name] = tensors[name]
    for i in range(config.num_layers):
        for name, gguf_name in LAYER_TENSORS.items():
            tensor = tensors[f"model.layers.{i}.{name}"]
            if name == "self_attn.q_proj.weight":
                tensor = interleave_rotary_rows(tensor, config.num_heads)
            elif name == "self_attn.k_proj.weight":
                tensor = interleave_rotary_rows(tensor, config.num_kv_heads)
            out[f"blk.{i}.{gguf_name}"] = tensor
    return out


def interleave_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Per head, rows (0..d/2-1 | d/2..d-1) become (0, d/2, 1, d/2+1, ...)."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape))


def write_gguf(path: Path, config: ModelConfig, tensors: dict[str, torch.Tensor], vocab: Vocab,
               dtype: str, name: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(float(config.rope_theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    add_vocab(writer, vocab, config)
    for tensor_name, tensor in tensors.items():
        data, raw_dtype = encoded(tensor, dtype)
        writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def add_vocab(writer, vocab: Vocab, config: ModelConfig) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.remove_extra_whitespaces is not None:
        writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    for add, token_id in ((writer.add_bos_token_id, config.bos_token_id),
                          (writer.add_eos_token_id, config.eos_token_id),
                          (writer.add_pad_token_id, config.pad_token_id)):
        if token_id is not None:
            add(token_id)
    unknown = [i for i, kind in enumerate(vocab.types) if kind == UNKNOWN]
    if unknown:
        writer.add_unk_token_id(unknown[0])
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    writer.add_chat_template(vocab.chat_template)


def encoded(tensor: torch.Tensor, dtype: str):
    """(array, raw GGML type or None) as the writer takes them: vectors float32, matrices f16/Q8_0."""
    import gguf

    values = tensor.detach().float().cpu().numpy()
    if values.ndim == 1:
        return values.astype(np.float32), None
    if dtype == "q8_0" and values.shape[-1] % Q8_BLOCK == 0:
        return gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return values.astype(np.float16), None


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write; renamed onto `path` only once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
