"""μP training rules in one place: per-tensor init (operation 3) and AdamW groups (operation 4).

Every parameter falls into one of three roles:

* ``hidden``: 2-D matrices inside the blocks (q/k/v/o, gate/up/down). Init std
  ``init_std / sqrt(m)`` and learning rate ``lr / m``, m = hidden / dim_model_base.
* ``embedding``: the (tied) token embedding, and an untied LM head. Init std ``init_std`` and
  the base learning rate; the LM head's width dependence is carried by the 1/m logit multiplier.
* ``norm``: RMSNorm gains. Init 1, base learning rate (``mup.norm_lr="hidden"`` divides it by m),
  never weight-decayed.

With μP off, m = 1 and every rule reduces to standard parameterization at std ``init_std``.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from xmodel2.model.config import ModelConfig

OUTPUT_PROJECTIONS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


def parameter_role(name: str, param: torch.Tensor) -> str:
    if param.ndim < 2:
        return "norm"
    if name.endswith("embed_tokens.weight") or name.endswith("lm_head.weight"):
        return "embedding"
    return "hidden"


def init_std(config: ModelConfig, name: str, param: torch.Tensor) -> float | None:
    """The init std of one tensor, or None for tensors initialised to ones (norm gains)."""
    role = parameter_role(name, param)
    if role == "norm":
        return None
    std = config.mup.init_std
    if role == "embedding":
        return std
    std /= math.sqrt(config.width_multiplier)
    if config.mup.output_init == "depth_scaled" and name.endswith(OUTPUT_PROJECTIONS):
        std /= math.sqrt(2 * config.num_layers)
    return std


@torch.no_grad()
def init_weights(model: nn.Module, config: ModelConfig, generator: torch.Generator | None = None) -> None:
    """Initialise every parameter in place by μP's rule (deterministic given `generator`)."""
    for name, param in model.named_parameters():
        std = init_std(config, name, param)
        if std is None:
            param.fill_(1.0)
        elif param.device.type == "meta":
            continue
        else:
            # Draw in fp32 on CPU so the same seed gives the same weights on every device/dtype.
            values = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
            param.copy_(values)


def lr_scale(config: ModelConfig, role: str) -> float:
    """Multiplier on the base learning rate for a role (operation 4)."""
    m = config.width_multiplier
    if role == "hidden":
        return 1.0 / m
    if role == "norm" and config.mup.norm_lr == "hidden":
        return 1.0 / m
    return 1.0


def weight_decay_for(config: ModelConfig, role: str, weight_decay: float) -> float:
    """The AdamW `weight_decay` of a group so that the chosen policy holds.

    torch's AdamW decays each step by ``group_lr * weight_decay``. "coupled" keeps that
    (hidden matrices then decay m times less than the embedding); "independent" multiplies the
    coefficient by 1/lr_scale so every group decays by ``base_lr * weight_decay`` per step.
    """
    if role == "norm":
        return 0.0
    if config.mup.weight_decay_policy == "independent":
        return weight_decay / lr_scale(config, role)
    return weight_decay


def parameter_groups(model: nn.Module, config: ModelConfig, lr: float,
                     weight_decay: float) -> list[dict]:
    """AdamW parameter groups, each with an `lr_scale` that schedules multiply (never replace)."""
    by_role: dict[str, list[torch.Tensor]] = {"embedding": [], "hidden": [], "norm": []}
    names: dict[str, list[str]] = {role: [] for role in by_role}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        role = parameter_role(name, param)
        by_role[role].append(param)
        names[role].append(name)
    groups = []
    for role, params in by_role.items():
        if not params:
            continue
        scale = lr_scale(config, role)
        groups.append({"params": params, "name": role, "param_names": names[role],
                       "lr_scale": scale, "lr": lr * scale,
                       "weight_decay": weight_decay_for(config, role, weight_decay)})
    return groups


def build_optimizer(model: nn.Module, config: ModelConfig, lr: float, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                    implementation: str = "fused") -> torch.optim.AdamW:
    groups = parameter_groups(model, config, lr, weight_decay)
    # `param_names` is ours; AdamW keeps unknown group keys, and they survive state_dict().
    kwargs: dict = {"betas": betas, "eps": eps}
    if implementation == "fused":
        kwargs["fused"] = True
    elif implementation == "foreach":
        kwargs["foreach"] = True
    else:
        kwargs["foreach"] = False
    return torch.optim.AdamW(groups, lr=lr, **kwargs)


def set_learning_rate(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    """Apply a scheduled base LR to every group, keeping μP's per-group ratios."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group["lr_scale"]


def count_by_role(model: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        role = parameter_role(name, param)
        counts[role] = counts.get(role, 0) + param.numel()
    return counts


def iter_hidden_matrices(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    for name, param in model.named_parameters():
        if parameter_role(name, param) == "hidden":
            yield name, param
