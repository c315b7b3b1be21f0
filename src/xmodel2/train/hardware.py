"""Device selection, the measured matmul peak that MFU is reported against, and the process's
allocator setting for large CPU tensors."""

from __future__ import annotations

import ctypes
import functools
import os
import statistics
import sys
import time

import torch

from xmodel2.errors import UserError


def pick_device(name: str = "auto", what: str = "train.device") -> torch.device:
    """The torch device `name` names ("auto": CUDA when there is one, else the CPU), checked to
    exist on this machine; `what` (the key or option it came from) prefixes any error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"{what}={name}: not a device (cpu, cuda, cuda:N, mps or auto)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"{what}={name}: this machine has no CUDA device")
        if device.index is not None and device.index >= count:
            raise UserError(f"{what}={name}: this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{what}={name}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"{what}={name}: unsupported device type {device.type!r} (cpu, cuda or mps)")
    return device


def measure_matmul_flops(dtype: torch.dtype, device: torch.device | str = "cpu", size: int = 1024,
                         repeats: int = 5, min_seconds: float = 0.05) -> float:
    """Median FLOP/s of square matmuls: the machine's practical peak for this dtype.

    CPUs have no datasheet peak we can trust (AMX, turbo, shared cores), so MFU is stated
    against what a large matmul achieves on this machine right now. The matrices grow from 256
    up to `size` only while one product stays well under `min_seconds`: a CPU without native
    bf16 (AVX2 only) runs bf16 products 50x slower than fp32, and a fixed 2048-wide product
    would take 20 s each there.
    """
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n = min(256, size)
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.matmul(a, b)  # warm-up: first-call dispatch and allocation
        sync()
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        if 2 * n > size or time.perf_counter() - start > min_seconds / 8:
            break
        n *= 2
    rates = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while True:
            torch.matmul(a, b)
            count += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        rates.append(2 * n**3 * count / elapsed)
    return statistics.median(rates)


PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """"bf16" or "fp32" for a configured precision; "auto" takes bf16 autocast only where the
    device runs bf16 matmuls at least about as fast as fp32 ones."""
    if precision != "auto":
        return precision
    return "bf16" if _fast_bf16(torch.device(device).type) else "fp32"


@functools.lru_cache(maxsize=None)
def _fast_bf16(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    # Measured, not read off CPU flags: AVX512-BF16 and AMX make bf16 4x+ faster than fp32,
    # while an AVX2-only CPU falls back to a scalar bf16 kernel about 50x slower.
    bf16 = measure_matmul_flops(torch.bfloat16, "cpu", size=512, repeats=3, min_seconds=0.02)
    fp32 = measure_matmul_flops(torch.float32, "cpu", size=512, repeats=3, min_seconds=0.02)
    return bf16 >= 0.8 * fp32


def keep_freed_memory_for_reuse() -> bool:
    """Make glibc keep freed memory in the heap instead of returning it to the system.

    glibc serves every allocation above 32 MiB with a fresh `mmap` and unmaps it on free, so
    a training step's large tensors (the 8x512x32,000 bf16 logits are 262 MB) page-fault anew
    on every step: the benchmark's compiled step spent 0.2-0.3 s of its 1.6-1.8 s in page
    faults. With mmap'd chunks off and trimming off, freed blocks are reused as they are;
    the step took 1.44-1.47 s (transformers' compiled Llama in the same process: 2.12-2.36 ->
    1.84-1.90 s). The price: a process keeps its peak heap until it exits. Linux/glibc only;
    elsewhere, or with XMODEL2_SYSTEM_MALLOC=1 in the environment, nothing changes.
    """
    if os.environ.get("XMODEL2_SYSTEM_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from <malloc.h>
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


# ---- memory: what one training step needs, and what the device has -------------------------------

# Bytes kept for backward per token, per layer, per unit of hidden width: 34 at 16-bit activations
# (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", without
# their s/h attention-score term: our attention is blocked and never keeps an s x s matrix).
ACTIVATION_BYTES_PER_HIDDEN = {"bf16": 34, "fp32": 68}


def training_step_bytes(config, micro_batch: int, seq_len: int, precision: str,
                        activation_checkpointing: bool = False, shards: int = 1) -> dict[str, int]:
    """A lower estimate of the memory of one micro-batch step, by part, in bytes.

    fp32 weights, gradients and the two AdamW moments (16 bytes a parameter, divided over
    `shards` under FSDP); the activations kept for backward (only each block's input under
    activation checkpointing, plus one block recomputed); the logits and their gradient in fp32.
    """
    tokens = micro_batch * seq_len
    per_layer = tokens * config.hidden_size * ACTIVATION_BYTES_PER_HIDDEN.get(precision, 68)
    if activation_checkpointing:
        activations = tokens * config.hidden_size * 4 * config.num_layers + per_layer
    else:
        activations = per_layer * config.num_layers
    return {"weights, gradients and AdamW state": 16 * config.num_parameters() // shards,
            "activations": activations,
            "logits": 2 * 4 * tokens * config.vocab_size}


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation on `device`: free CUDA memory, or on the CPU the kernel's
    MemAvailable (capped by a cgroup memory limit); None where it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    candidates = [_meminfo_available(), _cgroup_room()]
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), when it has a limit."""
    try:
        limit = open("/sys/fs/cgroup/memory.max", encoding="ascii").read().strip()
        used = open("/sys/fs/cgroup/memory.current", encoding="ascii").read().strip()
        return None if limit == "max" else max(0, int(limit) - int(used))
    except (OSError, ValueError):
        return None
