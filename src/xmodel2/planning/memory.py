"""Memory per GPU of a planned run: the simulated step with and without activation checkpointing,
and the largest micro-batch that fits the GPU with each."""

from __future__ import annotations

from dataclasses import dataclass

from xmodel2.planning.gpus import Gpu
from xmodel2.planning.runshape import RunShape
from xmodel2.planning.simulate import StepMemory, StepShape, simulate_steps
from xmodel2.train.schedule import largest_micro_batch

# Share of a GPU's memory a step may fill: the rest is for the CUDA context, NCCL's buffers and
# the caching allocator's fragmentation, none of which the simulation sees.
USABLE_SHARE = 0.9


@dataclass(frozen=True)
class MemoryPlan:
    usable: int  # bytes of the GPU a step may fill
    steps: dict[bool, StepMemory]  # activation checkpointing -> the simulated step
    largest_micro_batch: dict[bool, int | None]  # None: not even one sequence fits

    def fits(self, activation_checkpointing: bool) -> bool:
        return self.steps[activation_checkpointing].peak <= self.usable


def plan_memory(shape: RunShape, gpu: Gpu, precision: str, workers: int | None = None) -> MemoryPlan:
    """Simulate one step at the shape's micro-batch with activation checkpointing off and on (two
    processes at once where there are two cores)."""
    settings = (False, True)
    shapes = [StepShape(shape.config, shape.world_size, shape.micro_batch, shape.seq_len,
                        activation_checkpointing=ac, precision=precision) for ac in settings]
    steps = dict(zip(settings, simulate_steps(shapes, workers)))
    usable = int(gpu.memory * USABLE_SHARE)
    per_rank = [segment.per_rank for segment in shape.segments]
    largest = {ac: _largest_fitting(step, shape.micro_batch, per_rank, usable) for ac, step in steps.items()}
    return MemoryPlan(usable, steps, largest)


def _largest_fitting(step: StepMemory, simulated: int, per_rank: list[int], usable: int) -> int | None:
    """The largest micro-batch dividing every per-rank batch whose scaled peak fits `usable`."""
    def fits(size: int) -> bool:
        return step.scaled_peak(simulated, size) <= usable

    if not fits(1):
        return None
    return largest_micro_batch(per_rank, fits)
