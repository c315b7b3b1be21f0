"""Time and GPU-hours of a run from the project's FLOP count, a datasheet peak and an assumed MFU.

MFU counts model FLOPs only (train/flops.py: 6 x matmul weights + attention per token), so the
recomputation that activation checkpointing adds is one of the things a lower MFU stands for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from xmodel2.errors import UserError
from xmodel2.model.config import ModelConfig
from xmodel2.planning.gpus import DEFAULT_MFU, Gpu
from xmodel2.train.flops import training_flops_per_token


@dataclass(frozen=True)
class RunTime:
    flops_per_token: int
    mfu: float
    tokens_per_second: float  # all GPUs together
    step_seconds: float  # of a step of `step_tokens`
    wall_seconds: float
    gpu_hours: float
    cost: float | None  # in the unit of the price per GPU-hour, when one is given

    def to_dict(self) -> dict:
        return asdict(self)


def check_mfu(mfu: float) -> float:
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu:g}: must be a fraction in (0, 1], e.g. 0.4 for 40%")
    return mfu


def run_time(config: ModelConfig, seq_len: int, tokens: int, step_tokens: int, gpus: int, gpu: Gpu,
             mfu: float = DEFAULT_MFU, price_per_gpu_hour: float | None = None) -> RunTime:
    """How long `tokens` take on `gpus` GPUs of type `gpu` running at `mfu` of their bf16 peak."""
    check_mfu(mfu)
    flops_per_token = training_flops_per_token(config, seq_len)
    tokens_per_second = gpus * gpu.bf16_flops * mfu / flops_per_token
    wall = tokens / tokens_per_second
    gpu_hours = wall * gpus / 3600
    cost = gpu_hours * price_per_gpu_hour if price_per_gpu_hour is not None else None
    return RunTime(flops_per_token, mfu, tokens_per_second, step_tokens / tokens_per_second, wall,
                   gpu_hours, cost)


def implied_mfu(config: ModelConfig, seq_len: int, tokens: int, gpu: Gpu, gpu_hours: float) -> float:
    """The MFU at which `tokens` take `gpu_hours` on `gpu` (e.g. to read a report's figure)."""
    return tokens * training_flops_per_token(config, seq_len) / (gpu_hours * 3600 * gpu.bf16_flops)
