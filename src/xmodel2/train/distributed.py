"""Data-parallel training under torchrun: process group, rank helpers, and `parallelize`.

`torchrun --nproc_per_node N -m xmodel2 pretrain ...` starts N copies of the same command with
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR in the environment; `init_distributed` joins them
into one process group (nccl on CUDA, gloo on CPU). The model stays math only; distribution is
applied afterwards in one function, `parallelize` (torchtitan's layout):

1. activation checkpointing per decoder block (recompute the block in backward);
2. optional `torch.compile` per block (small graphs, recompiled once, shared by every block),
   and then of the LM head + loss as well;
3. DDP around the whole loss, or FSDP2 `fully_shard` on every block and then on the root.

The unit that DDP and FSDP wrap is `LossModule`, whose forward returns the loss: the tied
embedding is also the output projection, used after the decoder's forward, and only a wrapper
whose forward covers the loss makes DDP's reducer and FSDP's unshard hooks see that use. Its
optional `normalizer` replaces the micro-batch's own count of target tokens as the divisor, so
training can weigh every target token of the global batch alike (trainer.accumulate_gradients).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from typing import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from xmodel2.model.transformer import Transformer
from xmodel2.train.loss import next_token_loss

STRATEGIES = ("none", "ddp", "fsdp")
# Rank 0 may spend long minutes training a tokenizer or preparing shards while the others wait;
# that wait gets its own gloo group so the main group keeps torch's short default timeout.
PREPARATION_TIMEOUT = datetime.timedelta(hours=4)

_preparation_group = None


class LossModule(nn.Module):
    """`(input_ids, targets[, normalizer]) -> next-token loss`, the mean by default (see the module
    docstring)."""

    def __init__(self, model: nn.Module, compile_loss: bool | None = None) -> None:
        super().__init__()
        self.model = model
        self.compile_loss = compile_loss  # None: compile it when the model is compiled

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor,
                normalizer: float | None = None) -> torch.Tensor:
        return next_token_loss(self.model, input_ids, targets, compile_loss=self.compile_loss,
                               normalizer=normalizer)


# ---- process group and ranks -----------------------------------------------------------------------

def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def say(message: str) -> None:
    """`xmodel2: message` on stderr, from the main process only (one line per run, not per rank)."""
    if is_main_process():
        print(f"xmodel2: {message}", file=sys.stderr, flush=True)


def init_distributed(device_name: str = "auto") -> torch.device:
    """Join torchrun's process group; return this rank's device (cuda:LOCAL_RANK or cpu)."""
    global _preparation_group
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        # nccl for the tensors, gloo for the few CPU-side collectives (barriers, objects).
        dist.init_process_group("cuda:nccl,cpu:gloo", device_id=device)
    else:
        if device_name not in ("auto", "cpu"):
            raise ValueError(f"device {device_name!r} is not usable under torchrun here")
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    _preparation_group = dist.new_group(backend="gloo", timeout=PREPARATION_TIMEOUT)
    return device


def shutdown_distributed() -> None:
    global _preparation_group
    if is_distributed():
        dist.destroy_process_group()
    _preparation_group = None


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes shared files); the others run it after."""
    if not is_distributed():
        yield
        return
    group = _preparation_group
    if not is_main_process():
        dist.barrier(group=group)
    yield
    if is_main_process():
        dist.barrier(group=group)


def all_reduce_sum(value: float, device: torch.device) -> float:
    """The sum of a per-rank number over all ranks (the number itself when not distributed);
    float64, so counts of tokens stay exact."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item()


def all_reduce_mean(value: float, device: torch.device) -> float:
    """The mean of a per-rank number over all ranks (the number itself when not distributed)."""
    return all_reduce_sum(value, device) / world_size()


# ---- parallelize -----------------------------------------------------------------------------------

def apply_activation_checkpointing(model: Transformer) -> None:
    """Recompute each decoder block in backward instead of keeping its activations.

    The block's forward is replaced in place rather than wrapped in another module, so
    parameter names (and so checkpoints and optimizer groups) stay the Llama ones.
    """
    for layer in model.model.layers:
        layer.forward = _checkpointed(layer.forward)


def _checkpointed(forward):
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def parallelize(model: Transformer, strategy: str, device: torch.device, *,
                activation_checkpointing: bool = False, compile_blocks: bool = False,
                bf16_params: bool = False) -> nn.Module:
    """Apply activation checkpointing, block compilation and DDP or FSDP2; return the loss module.

    Call it before building the optimizer: `fully_shard` replaces each parameter with a sharded
    DTensor. `bf16_params` (FSDP2 on CUDA) all-gathers and computes in bf16 while the sharded
    master weights, the optimizer and the gradient reduce-scatter stay fp32.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"parallel.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile_blocks:
        for layer in model.model.layers:
            layer.compile()
    loss_module = LossModule(model, compile_loss=compile_blocks)
    if strategy == "none":
        return loss_module
    if not is_distributed():
        raise RuntimeError(f"parallel.strategy={strategy} needs a process group (run under torchrun)")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        # The only buffer is the RoPE table, the same on every rank: no per-step broadcast.
        return DistributedDataParallel(loss_module, device_ids=device_ids, forward_sync_buffers=False)
    return _fully_shard(loss_module, model, device, bf16_params)


def _fully_shard(loss_module: LossModule, model: Transformer, device: torch.device,
                 bf16_params: bool) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size(),))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if bf16_params else MixedPrecisionPolicy())
    layers = list(model.model.layers)
    for index, layer in enumerate(layers):
        # The last block's parameters are needed again first in backward: keep them gathered.
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=index < len(layers) - 1)
    # The root owns what is left: the tied embedding / output projection and the final norm.
    fully_shard(loss_module, mesh=mesh, mp_policy=policy)
    return loss_module


# ---- inside a training step ------------------------------------------------------------------------

@contextlib.contextmanager
def gradient_sync(loss_module: nn.Module, enabled: bool) -> Iterator[None]:
    """Around one micro-batch's forward and backward: reduce gradients across ranks only when
    `enabled` (the last micro-batch of a step); earlier ones accumulate locally."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(loss_module, DistributedDataParallel) and not enabled:
        with loss_module.no_sync():
            yield
    elif isinstance(loss_module, FSDPModule):
        loss_module.set_requires_gradient_sync(enabled)
        yield
    else:
        yield


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> float:
    """Clip to `max_norm` by the norm of the whole gradient (over all shards); return that norm."""
    from torch.distributed.tensor import DTensor

    parameters = [p for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in parameters], norm_type=2.0)
    if isinstance(total, DTensor):  # FSDP2: each rank holds a partial norm of its shards
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total.item()
