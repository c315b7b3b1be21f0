"""A plan for people (a table) and for scripts (one JSON object)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from xmodel2.planning.cost import RunTime
from xmodel2.planning.gpus import Gpu
from xmodel2.planning.memory import USABLE_SHARE, MemoryPlan
from xmodel2.planning.runshape import RunShape
from xmodel2.planning.simulate import PARTS

GIB = 2**30


@dataclass(frozen=True)
class Plan:
    config_path: str
    gpu: Gpu
    gpus: int
    precision: str
    activation_checkpointing: bool  # the setting the run uses
    shape: RunShape
    memory: MemoryPlan
    time: RunTime
    simulation_seconds: float


def plan_json(plan: Plan) -> dict:
    ac = plan.activation_checkpointing
    step = plan.memory.steps[ac]
    return {
        "config": plan.config_path,
        "gpu": asdict(plan.gpu),
        "gpus": plan.gpus,
        "precision": plan.precision,
        "activation_checkpointing": ac,
        "run": plan.shape.to_dict(),
        "memory": {
            "usable_bytes": plan.memory.usable,
            "peak_bytes": step.peak,
            "fits": plan.memory.fits(ac),
            "parts": step.parts,
            "by_activation_checkpointing": {
                ("on" if setting else "off"): {**simulated.to_dict(),
                                               "fits": plan.memory.fits(setting),
                                               "largest_micro_batch": plan.memory.largest_micro_batch[setting]}
                for setting, simulated in plan.memory.steps.items()},
        },
        "time": plan.time.to_dict(),
        "simulation_seconds": plan.simulation_seconds,
    }


def plan_text(plan: Plan) -> str:
    shape, gpu, memory = plan.shape, plan.gpu, plan.memory
    config = shape.config
    lines = [f"xmodel2 plan: {plan.config_path} on {plan.gpus} x {gpu.model} "
             f"(FSDP2, {plan.precision}, activation checkpointing {_on(plan.activation_checkpointing)})",
             "",
             f"model        {config.num_parameters():,} parameters: {config.num_layers} layers, hidden "
             f"{config.hidden_size}, vocabulary {config.vocab_size:,}"]
    for segment in shape.segments:
        lines.append(f"batch        from step {segment.from_step:,}: {segment.global_batch:,} sequences x "
                     f"{shape.seq_len:,} tokens = {_count(segment.global_batch * shape.seq_len)} tokens; "
                     f"{segment.per_rank} per GPU = {segment.accumulation} micro-batch(es) of "
                     f"{shape.micro_batch} ({shape.micro_batch_from})")
    lines.append(f"tokens       {_count(shape.tokens)} over {shape.steps:,} steps")
    for stage in shape.stages:
        sources = ", ".join(f"{name} {_count(tokens)}" for name, tokens in stage.sources.items())
        lines.append(f"stage        {stage.name}: {stage.steps:,} steps, {_count(stage.tokens)} tokens ({sources})")
    lines.append(f"checkpoint   {shape.checkpoint_bytes / GIB:,.1f} GiB each (fp32 weights + AdamW moments), "
                 f"{shape.checkpoints_kept} kept: {shape.checkpoint_bytes * shape.checkpoints_kept / GIB:,.1f} GiB")
    lines += ["", f"memory per GPU, one simulated step of micro-batch {shape.micro_batch}:",
              f"  {'activation checkpointing':<48}{'off':>12}{'on':>12}"]
    for part in PARTS:
        lines.append(f"  {part:<48}" + "".join(f"{_gib(memory.steps[ac].parts[part]):>12}" for ac in (False, True)))
    lines.append(f"  {'peak':<48}" + "".join(f"{_gib(memory.steps[ac].peak):>12}" for ac in (False, True)))
    room = f"fits in {USABLE_SHARE:.0%} of {gpu.memory / 1e9:g} GB ({_gib(memory.usable)})"
    lines.append(f"  {room:<48}" + "".join(f"{('yes' if memory.fits(ac) else 'NO'):>12}" for ac in (False, True)))
    lines.append(f"  {'largest micro-batch that fits (estimated)':<48}"
                 + "".join(f"{_largest(memory.largest_micro_batch[ac]):>12}" for ac in (False, True)))
    t = plan.time
    lines += ["", f"time at {t.mfu:.0%} MFU of {gpu.bf16_flops / 1e12:,.1f} TFLOP/s (dense bf16 peak) per GPU:",
              f"  FLOPs per token   {t.flops_per_token:.3e}",
              f"  tokens/s          {t.tokens_per_second:,.0f} ({t.tokens_per_second / plan.gpus:,.0f} per GPU)",
              f"  step              {t.step_seconds:,.2f} s",
              f"  wall-clock        {_duration(t.wall_seconds)}",
              f"  GPU-hours         {t.gpu_hours:,.0f}"]
    if t.cost is not None:
        lines.append(f"  cost              {t.cost:,.0f} (at the given price per GPU-hour)")
    lines += ["", f"simulated on this CPU in {plan.simulation_seconds:.0f} s; the largest micro-batch scales the "
                  "simulated activations and temporaries, and memory outside the step (CUDA context, NCCL, "
                  f"allocator slack) is the {1 - USABLE_SHARE:.0%} left free"]
    return "\n".join(lines)


def _on(value: bool) -> str:
    return "on" if value else "off"


def _gib(size: int) -> str:
    return f"{size / GIB:,.2f} GiB"


def _largest(size: int | None) -> str:
    return "none" if size is None else str(size)


def _count(value: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:,.2f}{unit}"
    return f"{value:,.0f}"


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:,.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:,.1f} hours"
    return f"{seconds / 60:,.1f} minutes"
