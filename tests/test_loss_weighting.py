"""A step's loss is the mean over every target token of its global batch: with masks that make
micro-batches unequal, k micro-batches on one process and k micro-batches on each of two gloo ranks
(DDP and FSDP) give the loss and the gradients of one batch of the same tokens. The mean of
micro-batch means that training used before does not.

Run as a script under torchrun, this file is one rank of the two-rank check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from xmodel2.data.plan import DataPlan, MicroBatch
from xmodel2.data.sft_mask import IGNORE_INDEX
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model
from xmodel2.model.mup import build_optimizer
from xmodel2.train.distributed import LossModule
from xmodel2.train.loss import next_token_loss
from xmodel2.train.schedule import BatchSchedule
from xmodel2.train.trainer import LoopSettings, Trainer, accumulate_gradients

VOCAB, SEQ, BATCH = 300, 24, 8
# Masked prompt length of sequence i: pairs of sequences keep 3, 28, 36 and 40 targets, and
# halves of the batch (micro-batches of four, or the two ranks' shares) 31 and 76.
MASKED = [23, 22, 20, 0, 0, 12, 2, 6]
CPU = torch.device("cpu")


class PromptMaskedSequences:
    """Seeded random token sequences whose first MASKED[i % 8] targets carry no loss."""

    def training_pair(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [torch.randint(0, VOCAB, (SEQ + 1,), generator=torch.Generator().manual_seed(i)) for i in indices]
        block = torch.stack(rows)
        targets = block[:, 1:].clone()
        for row, i in enumerate(indices):
            targets[row, :MASKED[i % len(MASKED)]] = IGNORE_INDEX
        return block[:, :-1], targets


@dataclass
class Stage:
    name: str
    start: int
    end: int
    dataset: PromptMaskedSequences


def plan(micro_batch_size: int, world_size: int = 1) -> DataPlan:
    return DataPlan([Stage("only", 0, 4, PromptMaskedSequences())], BatchSchedule.constant(BATCH),
                    micro_batch_size, world_size)


def model_config() -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                       num_kv_heads=2, mup={"dim_model_base": 128})


def fresh_model():
    return build_model(model_config(), seed=3)


def whole_batch(step: int = 0) -> MicroBatch:
    (batch,) = plan(BATCH).rank_micro_batches(step)
    return batch


def reference_loss(model, batch: MicroBatch) -> torch.Tensor:
    """Plain cross-entropy, mean over unmasked targets, from full logits: no code under test."""
    logits = model(batch.inputs).float()
    return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX)


def reference(step: int = 0) -> tuple[float, dict[str, torch.Tensor]]:
    model = fresh_model()
    loss = reference_loss(model, whole_batch(step))
    loss.backward()
    return loss.item(), gradients(model)


def gradients(model) -> dict[str, torch.Tensor]:
    """Full gradients by parameter name (FSDP holds shards; they are gathered)."""
    out = {}
    for name, param in model.named_parameters():
        grad = param.grad
        out[name] = (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).detach().clone()
    return out


def assert_same_gradients(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def mean_of_micro_batch_means(micro_batches: list[MicroBatch]) -> tuple[float, dict[str, torch.Tensor]]:
    """What training computed before: each micro-batch's own mean, averaged with equal weights
    (over micro-batches, then over ranks, which is the same for equal numbers per rank)."""
    model = fresh_model()
    total = 0.0
    for batch in micro_batches:
        loss = next_token_loss(model, batch.inputs, batch.targets) / len(micro_batches)
        loss.backward()
        total += loss.item()
    return total, gradients(model)


def all_micro_batches(data: DataPlan, step: int = 0) -> list[MicroBatch]:
    return [b for rank in range(data.world_size) for b in data.rank_micro_batches(step, rank)]


def differs(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> bool:
    return any(not torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-7) for n in want)


def test_micro_batches_are_unequal():
    assert [b.target_tokens for b in plan(2).rank_micro_batches(0)] == [3, 28, 36, 40]
    assert [b.target_tokens for b in plan(4).rank_micro_batches(0)] == [31, 76]


@pytest.mark.parametrize("micro_batch_size", [1, 2, 4])
def test_accumulated_micro_batches_equal_one_batch(micro_batch_size):
    want_loss, want_grads = reference()
    model = fresh_model()
    micro_batches = plan(micro_batch_size).rank_micro_batches(0)
    assert len(micro_batches) == BATCH // micro_batch_size
    loss = accumulate_gradients(LossModule(model), micro_batches, 1, "fp32", CPU)
    assert loss == pytest.approx(want_loss, rel=1e-6)
    assert_same_gradients(gradients(model), want_grads)
    # The mean of micro-batch means fails the same check.
    old_loss, old_grads = mean_of_micro_batch_means(micro_batches)
    assert old_loss != pytest.approx(want_loss, rel=1e-3)
    assert differs(old_grads, want_grads)


def test_trainer_step_is_the_same_for_any_micro_batch_size():
    results = []
    for micro_batch_size in (BATCH, 2):
        torch.manual_seed(0)
        model = fresh_model()
        optimizer = build_optimizer(model, model_config(), lr=1e-3, weight_decay=0.0, implementation="foreach")
        settings = LoopSettings(total_steps=2, seq_len=SEQ, grad_clip=0.0, precision="fp32")
        trainer = Trainer(model, optimizer, settings, plan(micro_batch_size), lambda step: 1.0, 1e-3, CPU)
        results.append([trainer.train_step(step) for step in range(2)])
    (whole, split) = results
    assert whole[0][0] == pytest.approx(reference()[0], rel=1e-6)
    for (loss, norm), (want_loss, want_norm) in zip(split, whole):
        assert loss == pytest.approx(want_loss, rel=1e-6)
        assert norm == pytest.approx(want_norm, rel=1e-5)


# ---- two ranks ----------------------------------------------------------------------------------

RANKS, RANK_MICRO_BATCH = 2, 2  # two micro-batches of two sequences on each of two ranks


def test_two_gloo_ranks_equal_one_batch(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(RANKS),
               __file__, str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    want_loss, want_grads = reference()
    losses = json.loads((tmp_path / "losses.json").read_text())
    for strategy in ("ddp", "fsdp"):
        assert losses[strategy] == pytest.approx(want_loss, rel=1e-6), strategy
        assert_same_gradients(load_file(str(tmp_path / f"{strategy}.safetensors")), want_grads)
    old_loss, old_grads = mean_of_micro_batch_means(all_micro_batches(plan(RANK_MICRO_BATCH, RANKS)))
    assert old_loss != pytest.approx(want_loss, rel=1e-3)
    assert differs(old_grads, want_grads)


def run_rank(out: Path) -> None:
    """One rank: the step's gradients under DDP and FSDP; rank 0 writes them and the losses."""
    from xmodel2.train import distributed

    device = distributed.init_distributed("cpu")
    rank = distributed.rank()
    losses = {}
    try:
        for strategy in ("ddp", "fsdp"):
            model = fresh_model()
            loss_module = distributed.parallelize(model, strategy, device)
            micro_batches = plan(RANK_MICRO_BATCH, RANKS).rank_micro_batches(0, rank)
            losses[strategy] = accumulate_gradients(loss_module, micro_batches, RANKS, "fp32", device)
            grads = gradients(model)  # a collective under FSDP: every rank takes part
            if rank == 0:
                save_file({name: grad.contiguous() for name, grad in grads.items()},
                          str(out / f"{strategy}.safetensors"))
        if rank == 0:
            (out / "losses.json").write_text(json.dumps(losses))
    finally:
        distributed.shutdown_distributed()


if __name__ == "__main__":
    run_rank(Path(sys.argv[1]))
