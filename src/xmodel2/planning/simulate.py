"""One FSDP2 training step of the real model code, simulated without memory: its peak per rank.

The model, `parallelize` (FSDP2 per block, activation checkpointing, compile off) and the μP
AdamW are the ones `pretrain` builds. Under torch's `FakeTensorMode` every tensor has a shape,
a dtype and a device but no storage, and a "fake" process group of N ranks answers every
collective at once, so a 1.2B model on 64 ranks runs its forward, backward and optimizer step on
one CPU core. torch's `FSDPMemTracker` sees every tensor the step creates and frees and sorts
the bytes into parameters, gradients, optimizer state, activations and temporaries; its peak is
what one GPU would hold (the CUDA context, NCCL buffers and allocator slack come on top).

The same tracker in real mode measures a real step (`track_step`), which is how the simulation
is checked against real FSDP2 runs on CPU ranks.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch

from xmodel2.errors import UserError
from xmodel2.model import attention as attention_module
from xmodel2.model.config import ModelConfig
from xmodel2.model.mup import build_optimizer, init_weights
from xmodel2.model.transformer import Transformer
from xmodel2.train import loss as loss_module_code
from xmodel2.train.distributed import parallelize

# The tracker's categories (torch's _FSDPRefType values) grouped into the parts a plan reports.
PARTS = {
    "parameters": ("Sharded Param", "Unsharded Param", "All Gather"),
    "gradients": ("Sharded Grad", "Unsharded Grad", "Reduce Scatter"),
    "optimizer state": ("OptState",),
    "activations": ("Activation", "Inputs"),
    "temporary buffers": ("Temp", "Buffer"),
}
# Parts that grow with the micro-batch (every tensor in them has a batch dimension).
PER_SEQUENCE_PARTS = ("activations", "temporary buffers")


@dataclass(frozen=True)
class StepShape:
    """What one simulated step trains: the model, the ranks and the micro-batch on each."""

    config: ModelConfig
    world_size: int
    micro_batch: int
    seq_len: int
    activation_checkpointing: bool
    precision: str = "bf16"  # "bf16" (autocast, FSDP2 gathers bf16 weights) or "fp32"
    gpu_kernels: bool = True  # attention as on a GPU (SDPA), not the CPU's blocked kernel


@dataclass(frozen=True)
class StepMemory:
    """Bytes per rank: the peak and its parts, and the sharded state that lives all step long."""

    peak: int
    parts: dict[str, int]  # at the peak, by PARTS
    sharded_parameters: int
    sharded_gradients: int
    optimizer_state: int

    def to_dict(self) -> dict:
        return asdict(self)

    def scaled_peak(self, from_micro_batch: int, to_micro_batch: int) -> int:
        """The peak at another micro-batch: the per-sequence parts scaled, the rest kept (an
        upper bound where the LM head's row chunking keeps its logits from growing)."""
        per_sequence = sum(self.parts[name] for name in PER_SEQUENCE_PARTS)
        return self.peak - per_sequence + per_sequence * to_micro_batch // from_micro_batch


def simulate_step(shape: StepShape) -> StepMemory:
    """The memory of one steady-state training step (optimizer state already made) on rank 0 of
    `shape.world_size` fake ranks. Opens and closes its own fake process group: call it where no
    other process group is open (a worker process of its own; see `planning.parallel`)."""
    torch_tools = _torch_tools()
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("simulate_step needs a process without a process group")
    dist.init_process_group("fake", store=torch_tools.FakeStore(), rank=0, world_size=shape.world_size)
    try:
        fake = torch_tools.FakeTensorMode()
        device = torch.device("cpu")
        with fake:
            with device:
                model = Transformer(shape.config)
            with torch.no_grad():
                init_weights(model, shape.config)
        # fully_shard builds its device mesh from real tensors: outside the fake mode (the
        # parameters it shards stay fake).
        with _simulable(shape.gpu_kernels):
            wrapped = parallelize(model, "fsdp", device,
                                  activation_checkpointing=shape.activation_checkpointing,
                                  bf16_params=shape.precision == "bf16")
            with fake:
                optimizer = build_optimizer(model, shape.config, lr=1e-3)
                _make_optimizer_state(model, optimizer)
                tokens = torch.zeros((shape.micro_batch, shape.seq_len), dtype=torch.long)
                return track_step(wrapped, optimizer, (tokens,),
                                  lambda: _training_step(wrapped, model, optimizer, tokens, shape.precision))
    except (torch_tools.DataDependentOutputException, torch_tools.DynamicOutputShapeException) as exc:
        raise UserError(f"the training step reads a tensor's values ({exc}), which a simulation "
                        "without memory cannot do; xmodel2 plan does not follow this model code") from None
    finally:
        dist.destroy_process_group()


def track_step(wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: tuple,
               step: Callable[[], object]) -> StepMemory:
    """Run `step()` (forward, backward, optimizer step of the FSDP2 `wrapped` module) under
    torch's FSDPMemTracker; real tensors are measured as they are, fake ones as if they were."""
    tracker = _torch_tools().FSDPMemTracker(wrapped, optimizer)
    tracker.track_inputs(inputs)
    after_backward: dict[str, int] = {}

    def note_gradients(*_):
        after_backward.update(_by_category(tracker.get_tracker_snapshot()))

    handle = optimizer.register_step_pre_hook(note_gradients)
    try:
        with tracker:
            step()
    finally:
        handle.remove()
    peak = _by_category(tracker.get_tracker_snapshot("peak"))
    parts = {name: sum(peak.get(category, 0) for category in categories)
             for name, categories in PARTS.items()}
    return StepMemory(peak=peak.get("Total", 0), parts=parts,
                      sharded_parameters=after_backward.get("Sharded Param", 0),
                      sharded_gradients=after_backward.get("Sharded Grad", 0),
                      optimizer_state=after_backward.get("OptState", 0))


def _by_category(snapshot: dict) -> dict[str, int]:
    """One device's bytes by category name (the tracker keys them by device, then by enum)."""
    totals: dict[str, int] = {}
    for per_device in snapshot.values():
        for category, size in per_device.items():
            name = getattr(category, "value", category)
            totals[name] = totals.get(name, 0) + int(size)
    return totals


def _make_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """One step on zero gradients, so AdamW's moments exist before the tracked step, as they do
    in every step after a run's first."""
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _training_step(wrapped: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   tokens: torch.Tensor, precision: str) -> None:
    """The trainer's step on one micro-batch, without its host reads (a fake tensor has no value):
    the loss is not read back and the clipping norm is not turned into a number."""
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    with autocast:
        loss = wrapped(tokens, tokens, normalizer=float(tokens.numel()))
    loss.backward()
    parameters = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters], norm_type=2.0)
    torch.nn.utils.clip_grads_with_norm_(parameters, 1.0, norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _simulable(gpu_kernels: bool) -> Iterator[None]:
    """Run the step on fake CPU tensors through the code paths the simulated run takes.

    The eager loss re-reads the few rows whose loss is too large for its fast formula, a host
    read that a fake tensor cannot answer: here only the comparison that finds them is made (no
    row qualifies in a normal step). With `gpu_kernels`, attention takes SDPA as on a GPU: on CPU
    tensors the model would pick its blocked kernel, which keeps every block's probabilities.
    """
    saved = []
    if gpu_kernels and hasattr(attention_module, "BLOCKED_MAX_SEQ"):
        saved.append((attention_module, "BLOCKED_MAX_SEQ", attention_module.BLOCKED_MAX_SEQ))
        attention_module.BLOCKED_MAX_SEQ = 0
    if hasattr(loss_module_code, "_recompute_large_losses"):
        saved.append((loss_module_code, "_recompute_large_losses", loss_module_code._recompute_large_losses))
        limit = getattr(loss_module_code, "EXACT_LOSS_LIMIT", 69.0)
        loss_module_code._recompute_large_losses = lambda losses, *_: losses > limit
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


@dataclass(frozen=True)
class _TorchTools:
    FakeTensorMode: type
    FakeStore: type
    FSDPMemTracker: type
    DataDependentOutputException: type
    DynamicOutputShapeException: type


def _torch_tools() -> _TorchTools:
    """torch's simulation pieces (some in private modules), or an error naming what is missing."""
    try:
        from torch._subclasses.fake_tensor import (DataDependentOutputException, DynamicOutputShapeException,
                                                   FakeTensorMode)
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
        from torch.testing._internal.distributed.fake_pg import FakeStore
    except ImportError as exc:
        raise UserError(f"xmodel2 plan needs torch's FakeTensorMode, fake process group and "
                        f"FSDPMemTracker (torch >= 2.6); this torch {torch.__version__} lacks one: {exc}") from None
    if not hasattr(torch.nn.utils, "get_total_norm"):
        raise UserError(f"xmodel2 plan needs torch >= 2.6 (torch.nn.utils.get_total_norm); "
                        f"this is torch {torch.__version__}")
    return _TorchTools(FakeTensorMode, FakeStore, FSDPMemTracker, DataDependentOutputException,
                       DynamicOutputShapeException)


def simulate_steps(shapes: list[StepShape], workers: int | None = None) -> list[StepMemory]:
    """`simulate_step` for each shape in worker processes (a simulation opens a process group,
    which the calling process may hold already), up to `workers` at once (default: the CPU's
    cores). A simulation keeps one core busy for its whole length, so more gain nothing."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = max(1, min(len(shapes), workers or os.cpu_count() or 1))
    # spawn: a forked child would inherit torch's threads and any process group of the parent.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(simulate_step, shapes))
