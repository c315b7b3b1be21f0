"""The parameterizations a coordinate check compares: μP itself and the negative controls.

Each control is the real μP model and optimizer with exactly one ingredient undone after they are
built, so the model code stays untouched and every arm shares everything else (weights drawn from
the same seed, the same batch, the same base LR):

* ``sp``: μP switched off in the config (every multiplier 1, init std `init_std` everywhere, one
  LR for all groups), i.e. the plain Llama parameterization.
* ``no-lr-scaling``: the hidden-matrix AdamW group gets the base LR instead of lr/m.
  Expected symptom: hidden updates |x_t - x_0| grow like width.
* ``no-logit-scaling``: ``model.logit_multiplier = 1`` instead of 1/m.
  Expected symptom: logits grow with width.
* ``no-init-scaling``: hidden matrices multiplied by sqrt(m) right after μP's init, so their std
  is `init_std` instead of `init_std / sqrt(m)` (the same draw, rescaled).
  Expected symptom: hidden activations at init grow like sqrt(width).
* ``no-depth-scaling`` (depth sweep): residual branches added with multiplier 1 instead of
  `scale_depth / sqrt(L)`. Expected symptom: the residual stream grows with depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from xmodel2.model.config import ModelConfig
from xmodel2.model.mup import iter_hidden_matrices
from xmodel2.model.transformer import Transformer


@dataclass(frozen=True)
class Arm:
    name: str
    description: str
    control: bool                 # a negative control must fail the check
    symptom: str = ""             # what a control is expected to break, in words
    mup_enabled: bool = True
    edit_model: Callable[[Transformer, ModelConfig], None] | None = None
    edit_optimizer: Callable[[torch.optim.Optimizer, float], None] | None = None


def _base_lr_for_hidden(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if group["name"] == "hidden":
            group["lr_scale"] = 1.0
            group["lr"] = lr


def _unit_logit_multiplier(model: Transformer, config: ModelConfig) -> None:
    model.logit_multiplier = 1.0


@torch.no_grad()
def _unscaled_hidden_init(model: Transformer, config: ModelConfig) -> None:
    factor = math.sqrt(config.width_multiplier)
    for _, param in iter_hidden_matrices(model):
        param.mul_(factor)


def _unit_residual_multiplier(model: Transformer, config: ModelConfig) -> None:
    for layer in model.model.layers:
        layer.attention_residual_multiplier = layer.mlp_residual_multiplier = 1.0


MUP = Arm("mup", "μP as configured (the subject)", control=False)

WIDTH_ARMS = (
    MUP,
    Arm("sp", "standard parameterization (μP disabled)", True,
        "hidden activations grow with width at init", mup_enabled=False),
    Arm("no-lr-scaling", "μP, hidden-matrix LR not divided by m", True,
        "hidden updates grow with width", edit_optimizer=_base_lr_for_hidden),
    Arm("no-logit-scaling", "μP, logit multiplier 1 instead of 1/m", True,
        "logits grow with width", edit_model=_unit_logit_multiplier),
    Arm("no-init-scaling", "μP, hidden init std init_std instead of init_std/sqrt(m)", True,
        "hidden activations grow with width at init", edit_model=_unscaled_hidden_init),
)

DEPTH_ARMS = (
    MUP,
    Arm("no-depth-scaling", "μP, residual branches not scaled by scale_depth/sqrt(L)", True,
        "the residual stream grows with depth", edit_model=_unit_residual_multiplier),
)
