"""Device selection and the measured matmul peak that MFU is reported against."""

from __future__ import annotations

import statistics
import time

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def measure_matmul_flops(dtype: torch.dtype, device: torch.device | str = "cpu", size: int = 1024,
                         repeats: int = 5, min_seconds: float = 0.05) -> float:
    """Median FLOP/s of square `size` matmuls: the machine's practical peak for this dtype.

    CPUs have no datasheet peak we can trust (AMX, turbo, shared cores), so MFU is stated
    against what a large matmul achieves on this machine right now.
    """
    device = torch.device(device)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.matmul(a, b)
    sync()
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
        rates.append(2 * size**3 * count / elapsed)
    return statistics.median(rates)
