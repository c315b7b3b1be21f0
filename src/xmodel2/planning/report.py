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
                     f"{shape.seq_len:,} tokens = {short_count(segment.global_batch * shape.seq_len)} tokens; "
                     f"{segment.per_rank} per GPU = {segment.accumulation} micro-batch(es) of "
                     f"{shape.micro_batch} ({shape.micro_batch_from})")
    lines.append(f"tokens       {short_count(shape.tokens)} over {shape.steps:,} steps")
    for stage in shape.stages:
        sources = ", ".join(f"{name} {short_count(tokens)}" for name, tokens in stage.sources.items())
        lines.append(f"stage        {stage.name}: {stage.steps:,} steps, {short_count(stage.tokens)} tokens ({sources})")
    lines.append(f"checkpoint   {_gib(shape.checkpoint_bytes)} each (fp32 weights + AdamW moments), "
                 f"{shape.checkpoints_kept} kept: {_gib(shape.checkpoint_bytes * shape.checkpoints_kept)}")
    lines += ["", f"memory per GPU, one simulated step of micro-batch {shape.micro_batch} "
                  "(its parts at the moment of the peak):",
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
              f"  step              {_duration(t.step_seconds)}",
              f"  wall-clock        {_duration(t.wall_seconds)}",
              f"  GPU-hours         {_significant(t.gpu_hours)}"]
    if t.cost is not None:
        lines.append(f"  cost              {_significant(t.cost)} (at the given price per GPU-hour)")
    lines += ["", f"simulated on this CPU in {plan.simulation_seconds:.0f} s. The largest micro-batch scales the "
                  "simulated activations and temporaries;",
              f"memory outside the step (CUDA context, NCCL, allocator slack) is the {1 - USABLE_SHARE:.0%} "
              "left free."]
    return "\n".join(lines)


def _on(value: bool) -> str:
    return "on" if value else "off"


def _gib(size: float) -> str:
    """Bytes in the largest binary unit that keeps a whole number in front."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:,.2f} {unit}"
    return f"{size:,.0f} B"


def _largest(size: int | None) -> str:
    return "none" if size is None else str(size)


def short_count(value: float, spec: str = ",.2f") -> str:
    """A count with a K/M/B/T suffix, its mantissa formatted by `spec` (1.58T, 3.5M, 840)."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:{spec}}{unit}"
    return f"{value:,.0f}"


def _duration(seconds: float) -> str:
    for unit, scale in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * scale:
            return f"{seconds / scale:,.1f} {unit}"
    return f"{_significant(seconds)} s"


def _significant(value: float) -> str:
    """Whole numbers from 100 up, three significant digits below."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
