"""Side-by-side speed of our model and transformers' LlamaForCausalLM on identical shapes.

All figures come from one run on one machine, interleaved so that background load hits both
sides alike, and are medians of several repeats:

* training step tokens/s (forward + backward + AdamW) and MFU, eager and `torch.compile`d, for
  ours and for `transformers.LlamaForCausalLM` with the same weights (μP folded in);
* the machine's measured fp32 and bf16 matmul rates (the MFU denominator);
* the step's *matmul floor*: the time the step's forward and backward matrix multiplications
  alone take when run at their exact shapes, so "1.4x floor" means 40% overhead beyond GEMMs;
* prefill and decode tokens/s at batch 1 and 8 against `transformers` `generate`, with fp32
  weights on both sides, plus transformers in bf16 and ours in the int8 inference format;
* for decoding, the bytes each generated token reads (weights, shared by the rows of a batch,
  plus each row's KV cache) and the fraction of the machine's measured memory-copy bandwidth
  that this rate of reading reaches: decoding is bound by memory, so this is its roofline.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from xmodel2.model.config import ModelConfig
from xmodel2.train import flops


@dataclass
class BenchShape:
    hidden: int = 512
    layers: int = 8
    heads: int = 8
    kv_heads: int = 4
    ffn: int = 1280
    vocab: int = 32000
    seq: int = 512
    batch: int = 8

    def config(self) -> ModelConfig:
        return ModelConfig(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.ffn,
                           num_layers=self.layers, num_heads=self.heads, num_kv_heads=self.kv_heads,
                           max_position_embeddings=max(4096, self.seq), mup={"dim_model_base": 256})


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per function, run round-robin so load drifts affect all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def memory_copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second a large tensor copy moves (each byte read once and written once), median.

    The buffer is far larger than any cache, so this is the DRAM bandwidth that decoding, which
    streams every weight once per step, can at best use.
    """
    source = torch.ones(megabytes << 20, dtype=torch.uint8)
    target = torch.empty_like(source)
    return 2 * source.numel() / median_time(lambda: target.copy_(source), repeats)


def weight_bytes_per_step(model: torch.nn.Module) -> int:
    """Bytes of parameters and buffers one decode step reads: each tensor once (tied ones once),
    except an embedding table that is only looked up (a few rows a step), not used as the LM head."""
    tensors = {t.data_ptr(): t.nbytes for t in (*model.parameters(), *model.buffers())}
    head = getattr(model, "lm_head", None)
    head_ptr = getattr(getattr(head, "weight", None), "data_ptr", lambda: None)()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and head is not None and module.weight.data_ptr() != head_ptr:
            tensors.pop(module.weight.data_ptr(), None)
    return sum(tensors.values())


def kv_bytes_per_row(config: ModelConfig, context: int, dtype: torch.dtype) -> int:
    """Bytes of keys and values one row's decode step reads at `context` cached positions."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * context * element


def decode_bytes_per_token(model: torch.nn.Module, config: ModelConfig, batch: int, context: int,
                           kv_dtype: torch.dtype) -> float:
    """Bytes read per generated token: a step's weights over the batch plus a row's KV cache."""
    return weight_bytes_per_step(model) / batch + kv_bytes_per_row(config, context, kv_dtype)


def build_pair(config: ModelConfig, seed: int = 0):
    """Our model and a transformers Llama computing the same function."""
    import transformers

    from xmodel2.interop.llama import fold_mup, llama_config
    from xmodel2.model.folder import build_model

    ours = build_model(config, seed=seed)
    tensors, tied = fold_mup(config, dict(ours.state_dict()))
    hf_config = transformers.LlamaConfig(**{k: v for k, v in llama_config(config, tied).items()
                                            if k not in ("architectures", "model_type")})
    hf_config._attn_implementation = "sdpa"
    theirs = transformers.LlamaForCausalLM(hf_config)
    theirs.load_state_dict(tensors, strict=not tied)
    return ours, theirs


def training_step(model: torch.nn.Module, loss_of: Callable, optimizer: torch.optim.Optimizer,
                  ids: torch.Tensor, precision: str) -> Callable[[], None]:
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())

    def step() -> None:
        with autocast:
            loss = loss_of(model, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def our_loss(model, ids):
    from xmodel2.train.loss import next_token_loss

    return next_token_loss(model, ids[:, :-1], ids[:, 1:])


def hf_loss(model, ids):
    # transformers' own loss, computed inside forward (so `torch.compile(model)` compiles it too,
    # as it does ours): full logits upcast to fp32, then cross-entropy on the same targets.
    targets = ids[:, 1:].contiguous()
    return model(ids[:, :-1], labels=targets, shift_labels=targets).loss


def prefill(model: torch.nn.Module, prompt: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(prompt)
    return run


def hf_generate(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> Callable[[], None]:
    """transformers' `generate`, greedy, exactly `new_tokens` tokens (no EOS stop)."""
    def run() -> None:
        with torch.inference_mode():
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    return run


def step_matmul_shapes(config: ModelConfig, batch: int, seq: int) -> list[tuple[str, tuple, int]]:
    """(kind, shape, count) of every matmul in one forward+backward step.

    Linear y = x W^T with x (M, K), W (N, K): forward (M,K)x(K,N); backward dX (M,N)x(N,K) and
    dW (N,M)x(M,K). Attention per layer: scores (BH, T, d)x(BH, d, T) and output (BH, T, T)x(BH,
    T, d) forward, each twice more in backward (flash attention recomputes the scores once more,
    which the floor does not count).
    """
    m = batch * seq
    h, f, d = config.hidden_size, config.intermediate_size, config.head_dim
    linears = [(h, config.num_heads * d), (h, config.num_kv_heads * d), (h, config.num_kv_heads * d),
               (config.num_heads * d, h), (h, f), (h, f), (f, h)]
    shapes: list[tuple[str, tuple, int]] = []
    for k, n in linears:
        shapes += [("mm", (m, k, n), config.num_layers), ("mm", (m, n, k), config.num_layers),
                   ("mm", (n, m, k), config.num_layers)]
    shapes += [("mm", (m, h, config.vocab_size), 1), ("mm", (m, config.vocab_size, h), 1),
               ("mm", (config.vocab_size, m, h), 1)]
    bh = batch * config.num_heads
    shapes += [("bmm", (bh, seq, d, seq), 3 * config.num_layers),
               ("bmm", (bh, seq, seq, d), 3 * config.num_layers)]
    return shapes


def matmul_floor_seconds(config: ModelConfig, batch: int, seq: int, dtype: torch.dtype,
                         repeats: int = 3) -> float:
    total = 0.0
    for kind, shape, count in step_matmul_shapes(config, batch, seq):
        if kind == "mm":
            m, k, n = shape
            a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
            seconds = median_time(lambda: torch.mm(a, b), repeats)
        else:
            bsz, m, k, n = shape
            a, b = torch.randn(bsz, m, k).to(dtype), torch.randn(bsz, k, n).to(dtype)
            seconds = median_time(lambda: torch.bmm(a, b), repeats)
        total += seconds * count
    return total


def training_flops_per_step(config: ModelConfig, batch: int, seq: int) -> float:
    return flops.training_flops_per_token(config, seq) * batch * seq
