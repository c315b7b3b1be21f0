"""μP's training rules: init std per role across widths, per-group LRs, weight-decay policies."""

import math

import pytest
import torch

from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model
from xmodel2.model.mup import build_optimizer, parameter_groups, parameter_role

BASE = 64
WIDTHS = (64, 128, 256)  # m = 1, 2, 4


def config_at(width: int, **mup) -> ModelConfig:
    return ModelConfig(vocab_size=2000, hidden_size=width, intermediate_size=width * 5 // 2,
                       num_layers=2, num_heads=width // 32, num_kv_heads=1,
                       mup={"dim_model_base": BASE, "init_std": 0.1, **mup})


def measured_std(model: torch.nn.Module, role: str, suffix: str = "") -> float:
    values = [p.detach().flatten() for n, p in model.named_parameters()
              if parameter_role(n, p) == role and n.endswith(suffix)]
    return torch.cat(values).std().item()


@pytest.mark.parametrize("width", WIDTHS)
def test_init_std_per_role_follows_init_std_over_sqrt_m(width):
    config = config_at(width)
    model = build_model(config, seed=0)
    m = width / BASE
    assert config.width_multiplier == m
    assert measured_std(model, "hidden") == pytest.approx(0.1 / math.sqrt(m), rel=0.02)
    assert measured_std(model, "embedding") == pytest.approx(0.1, rel=0.02)
    norms = [p for n, p in model.named_parameters() if parameter_role(n, p) == "norm"]
    assert norms and all(torch.equal(p, torch.ones_like(p)) for p in norms)


def test_hidden_std_shrinks_by_sqrt_m_across_three_widths():
    stds = [measured_std(build_model(config_at(w), seed=1), "hidden") for w in WIDTHS]
    assert stds[0] / stds[1] == pytest.approx(math.sqrt(2), rel=0.03)
    assert stds[0] / stds[2] == pytest.approx(2.0, rel=0.03)


def test_depth_scaled_output_init_divides_o_and_down_projections():
    config = config_at(128, output_init="depth_scaled")
    model = build_model(config, seed=2)
    expected = 0.1 / math.sqrt(2) / math.sqrt(2 * config.num_layers)
    assert measured_std(model, "hidden", "o_proj.weight") == pytest.approx(expected, rel=0.05)
    assert measured_std(model, "hidden", "down_proj.weight") == pytest.approx(expected, rel=0.05)
    assert measured_std(model, "hidden", "q_proj.weight") == pytest.approx(0.1 / math.sqrt(2), rel=0.05)


def test_mup_off_inits_every_matrix_at_init_std():
    model = build_model(config_at(256, enabled=False), seed=3)
    assert measured_std(model, "hidden") == pytest.approx(0.1, rel=0.02)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("norm_lr", ["base", "hidden"])
def test_group_learning_rates_follow_lr_over_m(width, norm_lr):
    config = config_at(width, norm_lr=norm_lr)
    m = width / BASE
    groups = {g["name"]: g for g in parameter_groups(build_model(config, device="meta"), config, 0.01, 0.1)}
    assert groups["hidden"]["lr"] == pytest.approx(0.01 / m)
    assert groups["embedding"]["lr"] == pytest.approx(0.01)
    assert groups["norm"]["lr"] == pytest.approx(0.01 / m if norm_lr == "hidden" else 0.01)
    assert all("embed_tokens" in n for n in groups["embedding"]["param_names"])
    assert all(n.endswith("_proj.weight") for n in groups["hidden"]["param_names"])


def decay_per_step(config: ModelConfig, lr: float, wd: float) -> dict[str, float]:
    """One AdamW step with zero gradients: the Adam update is 0, so only weight decay moves weights."""
    model = build_model(config, seed=4)
    optimizer = build_optimizer(model, config, lr=lr, weight_decay=wd)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    factors: dict[str, float] = {}
    for n, p in model.named_parameters():
        ratio = (p.detach() / before[n])
        factors.setdefault(parameter_role(n, p), 1.0 - ratio.mean().item())
    return factors


@pytest.mark.parametrize("width", WIDTHS)
def test_coupled_weight_decay_scales_with_the_group_lr(width):
    m = width / BASE
    decay = decay_per_step(config_at(width, weight_decay_policy="coupled"), lr=0.01, wd=0.1)
    assert decay["hidden"] == pytest.approx(0.01 / m * 0.1, rel=1e-3)
    assert decay["embedding"] == pytest.approx(0.01 * 0.1, rel=1e-3)
    assert decay["norm"] == 0.0


@pytest.mark.parametrize("width", WIDTHS)
def test_independent_weight_decay_is_the_same_at_every_width(width):
    decay = decay_per_step(config_at(width, weight_decay_policy="independent"), lr=0.01, wd=0.1)
    assert decay["hidden"] == pytest.approx(0.01 * 0.1, rel=1e-3)
    assert decay["embedding"] == pytest.approx(0.01 * 0.1, rel=1e-3)
    assert decay["norm"] == 0.0
