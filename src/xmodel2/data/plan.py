"""The data plan: which tokens every micro-batch of every step trains on, on every rank.

A run is a sequence of stages, each reading its own packed mixture in that mixture's seeded order.
A step reads the next `global batch` sequences of its stage; the global batch splits into
`world_size` contiguous shares, one per rank, and each share into micro-batches of
`micro_batch_size` sequences that the rank accumulates. So the sequences of (step, micro, rank)
follow from the stages, the batch schedule, the micro-batch size and the world size alone:

    first = offset(step) - offset(stage start) + (rank * accumulation(step) + micro) * micro_batch_size

The plan holds no state and reads nothing but its datasets, so any rank can ask for any step in
any order (resume is free), and the same global batch holds the same tokens whatever the world
size or micro-batch size that splits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from xmodel2.data.sft_mask import IGNORE_INDEX


class TrainingSequences(Protocol):
    """A dataset in a fixed order (`MixtureDataset`): sequences by index, masked targets as IGNORE_INDEX."""

    def training_pair(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]: ...


class Stage(Protocol):
    """Steps [start, end) read `dataset`, from its first sequence on."""

    name: str
    start: int
    end: int
    dataset: TrainingSequences


class GlobalBatches(Protocol):
    """The batch schedule: global batch size in sequences at a step, and sequences read before it."""

    def size(self, step: int) -> int: ...

    def offset(self, step: int) -> int: ...


@dataclass(frozen=True)
class RepeatedBatch:
    """One fixed batch of (inputs, targets) rows as a dataset: sequence i is row i mod rows, so a
    plan whose global batch equals the rows trains on exactly this batch at every step (the
    coordinate check's probes)."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def training_pair(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor([i % len(self.inputs) for i in indices], dtype=torch.long)
        return self.inputs[rows], self.targets[rows]


@dataclass(frozen=True)
class MicroBatch:
    """Inputs and targets, each (sequences, seq_len); a target of IGNORE_INDEX carries no loss."""

    inputs: torch.Tensor
    targets: torch.Tensor

    @property
    def loss_mask(self) -> torch.Tensor:
        """True where the target counts in the loss."""
        return self.targets != IGNORE_INDEX

    @property
    def target_tokens(self) -> int:
        """How many targets count in the loss: this micro-batch's share of the loss normaliser."""
        return int(self.loss_mask.sum())


def micro_batches_per_rank(global_batch: int, micro_batch_size: int, world_size: int) -> int:
    """How many micro-batches each rank accumulates for a global batch; it must split evenly, or
    some sequences would be dropped or read twice."""
    share, uneven_ranks = divmod(global_batch, world_size)
    count, uneven_micro = divmod(share, micro_batch_size)
    if uneven_ranks or uneven_micro or count == 0:
        raise ValueError(f"a global batch of {global_batch} sequences does not split into micro-batches "
                         f"of {micro_batch_size} on {world_size} rank(s)")
    return count


@dataclass(frozen=True)
class DataPlan:
    """(step, micro-batch, rank) -> `MicroBatch`, a pure function of the fields below."""

    stages: Sequence[Stage]
    batches: GlobalBatches
    micro_batch_size: int
    world_size: int = 1

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a data plan needs at least one stage")
        if self.micro_batch_size < 1 or self.world_size < 1:
            raise ValueError(f"micro_batch_size ({self.micro_batch_size}) and world_size "
                             f"({self.world_size}) must be positive")

    def accumulation(self, step: int) -> int:
        """Micro-batches per rank at `step`."""
        return micro_batches_per_rank(self.batches.size(step), self.micro_batch_size, self.world_size)

    def stage_at(self, step: int) -> Stage:
        """The stage `step` belongs to; steps past the last stage stay in it."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        for stage in self.stages:
            if stage.start <= step < stage.end:
                return stage
        return self.stages[-1]

    def sequence_indices(self, step: int, micro: int, rank: int) -> range:
        """Indices, in the stage dataset's order, of the sequences of one micro-batch."""
        accumulation = self.accumulation(step)
        if not 0 <= micro < accumulation or not 0 <= rank < self.world_size:
            raise IndexError(f"micro-batch {micro} of rank {rank} does not exist at step {step} "
                             f"({accumulation} micro-batches on each of {self.world_size} rank(s))")
        stage = self.stage_at(step)
        # Rank r's micro-batches are the r-th contiguous share of the step's global batch.
        first = (self.batches.offset(step) - self.batches.offset(stage.start)
                 + (rank * accumulation + micro) * self.micro_batch_size)
        return range(first, first + self.micro_batch_size)

    def micro_batch(self, step: int, micro: int, rank: int = 0) -> MicroBatch:
        inputs, targets = self.stage_at(step).dataset.training_pair(self.sequence_indices(step, micro, rank))
        return MicroBatch(inputs, targets)

    def rank_micro_batches(self, step: int, rank: int = 0) -> list[MicroBatch]:
        """All micro-batches `rank` accumulates at `step`, in order."""
        return [self.micro_batch(step, micro, rank) for micro in range(self.accumulation(step))]
