"""The data plan: a global batch holds the same tokens however ranks and micro-batches split it,
each rank reads its contiguous share, stages and a growing batch move the offsets, and the answer
depends on nothing but (step, micro-batch, rank)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from xmodel2.data.plan import DataPlan, MicroBatch, micro_batches_per_rank
from xmodel2.data.sft_mask import IGNORE_INDEX
from xmodel2.train.schedule import BatchSchedule

SEQ = 6


class NumberedSequences:
    """Sequence i of dataset `tag` holds tokens that name both, so a test can tell which it got;
    every third target is masked, as prompt masking would."""

    def __init__(self, tag: int):
        self.tag = tag
        self.reads: list[list[int]] = []

    def training_pair(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        indices = list(indices)
        self.reads.append(indices)
        rows = torch.tensor([[self.tag * 100_000 + i * 10 + p for p in range(SEQ + 1)] for i in indices])
        targets = rows[:, 1:].clone()
        targets[:, ::3] = IGNORE_INDEX
        return rows[:, :-1], targets


@dataclass
class Stage:
    name: str
    start: int
    end: int
    dataset: NumberedSequences


# Global batch 8 for steps 0-2, then 16; stage "decay" takes over at step 4 and reads its own data.
SCHEDULE = BatchSchedule(((0, 8), (3, 16)))
STEPS = 6


def stages() -> list[Stage]:
    return [Stage("stable", 0, 4, NumberedSequences(1)), Stage("decay", 4, STEPS, NumberedSequences(2))]


def global_batch(plan: DataPlan, step: int) -> MicroBatch:
    """Every rank's micro-batches of a step, rank after rank, in one batch."""
    parts = [batch for rank in range(plan.world_size) for batch in plan.rank_micro_batches(step, rank)]
    return MicroBatch(torch.cat([b.inputs for b in parts]), torch.cat([b.targets for b in parts]))


@pytest.mark.parametrize("micro_batch_size,world_size", [(4, 1), (2, 1), (1, 1), (4, 2), (2, 2), (1, 4),
                                                         (2, 4), (1, 8)])
def test_a_global_batch_holds_the_same_tokens_however_it_is_split(micro_batch_size, world_size):
    whole = DataPlan(stages(), SCHEDULE, micro_batch_size=8)  # step 3 on: two micro-batches of 8
    split = DataPlan(stages(), SCHEDULE, micro_batch_size, world_size)
    for step in range(STEPS):
        want, got = global_batch(whole, step), global_batch(split, step)
        assert got.inputs.shape == (SCHEDULE.size(step), SEQ)
        assert torch.equal(got.inputs, want.inputs), step
        assert torch.equal(got.targets, want.targets), step


def test_each_rank_reads_its_contiguous_share_of_the_step():
    plan = DataPlan(stages(), SCHEDULE, micro_batch_size=2, world_size=2)
    assert [plan.accumulation(s) for s in range(STEPS)] == [2, 2, 2, 4, 4, 4]
    # Step 1 of the first stage reads its sequences 8-15: rank 0 takes 8-11, rank 1 takes 12-15.
    assert [plan.sequence_indices(1, m, 0) for m in range(2)] == [range(8, 10), range(10, 12)]
    assert [plan.sequence_indices(1, m, 1) for m in range(2)] == [range(12, 14), range(14, 16)]
    # Step 3 holds 16 sequences after 3 x 8: 24-31 on rank 0, 32-39 on rank 1.
    assert plan.sequence_indices(3, 0, 0) == range(24, 26)
    assert plan.sequence_indices(3, 3, 1) == range(38, 40)
    # Step 4 opens the decay stage: its dataset, from its first sequence.
    assert plan.stage_at(4).name == "decay"
    assert plan.sequence_indices(4, 0, 0) == range(0, 2)
    assert plan.micro_batch(4, 0, 0).inputs[0, 0].item() == 200_000
    assert plan.micro_batch(5, 3, 1).inputs[:, 0].tolist() == [200_000 + 10 * i for i in (30, 31)]


def test_the_plan_is_a_pure_function_of_step_micro_batch_and_rank():
    first, second = DataPlan(stages(), SCHEDULE, 2, 2), DataPlan(stages(), SCHEDULE, 2, 2)
    keys = [(s, m, r) for s in range(STEPS) for r in range(2) for m in range(first.accumulation(s))]
    forward = {key: first.micro_batch(*key) for key in keys}
    backward = {key: second.micro_batch(*key) for key in reversed(keys)}  # e.g. a resume, any order
    for key in keys:
        assert torch.equal(forward[key].inputs, backward[key].inputs), key
        assert torch.equal(forward[key].targets, backward[key].targets), key
        assert torch.equal(first.micro_batch(*key).inputs, forward[key].inputs), key  # asked again
    # Together the micro-batches read every sequence of each stage exactly once.
    for stage in second.stages:
        read = sorted(i for indices in stage.dataset.reads for i in indices)
        assert read == sorted(set(read)) == list(range(len(read)))


def test_loss_mask_marks_the_targets_that_count():
    batch = DataPlan(stages(), SCHEDULE, 2).micro_batch(0, 0)
    assert torch.equal(batch.loss_mask, batch.targets != IGNORE_INDEX)
    assert batch.loss_mask[:, ::3].sum() == 0 and batch.loss_mask[:, 1::3].all()
    assert batch.target_tokens == 2 * (SEQ - SEQ // 3)


def test_a_batch_that_does_not_split_evenly_is_refused():
    assert micro_batches_per_rank(16, 2, 4) == 2
    for global_size, micro, world in [(8, 3, 1), (8, 2, 3), (8, 8, 2)]:
        with pytest.raises(ValueError, match=f"{global_size} sequences does not split into micro-batches "
                                             f"of {micro} on {world} rank"):
            micro_batches_per_rank(global_size, micro, world)
    plan = DataPlan(stages(), SCHEDULE, 2, 2)
    with pytest.raises(IndexError, match="micro-batch 2 of rank 0"):
        plan.micro_batch(0, 2, 0)
    with pytest.raises(IndexError, match="micro-batch 0 of rank 2"):
        plan.micro_batch(0, 0, 2)
    with pytest.raises(ValueError, match="micro_batch_size"):
        DataPlan(stages(), SCHEDULE, 0)
