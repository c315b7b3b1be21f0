"""Presets have exactly their expected parameter counts (xl is the released Xmodel-2 1.2B); invalid
shapes are rejected naming the field."""

import math

import pytest
import torch

from xmodel2.errors import UserError
from xmodel2.model.config import PRESET_SHAPES, ModelConfig, from_hf_config, preset, to_hf_config
from xmodel2.model.folder import build_model

# (total, non-embedding) with the 65,280-piece vocabulary, tied.
EXPECTED_COUNTS = {
    "xl": (1_251_755_520, 1_151_485_440),
    "nano": (21_958_912, 5_247_232),
    "tiny": (82_987_520, 49_564_160),
}


def count(model: torch.nn.Module, embeddings: bool = True) -> int:
    seen, total = set(), 0
    for name, param in model.named_parameters():
        if id(param) in seen or (not embeddings and "embed_tokens" in name):
            continue
        seen.add(id(param))
        total += param.numel()
    return total


@pytest.mark.parametrize("name", list(PRESET_SHAPES))
def test_preset_parameter_count_on_meta_matches_formula_and_design(name):
    config = preset(name)
    model = build_model(config, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert count(model) == config.num_parameters()
    assert count(model, embeddings=False) == config.num_parameters(embeddings=False)
    if name in EXPECTED_COUNTS:
        total, body = EXPECTED_COUNTS[name]
        assert count(model) == total
        assert count(model, embeddings=False) == body


def test_untied_model_counts_the_head_once_more():
    config = preset("nano", tie_embeddings=False)
    assert count(build_model(config, device="meta")) == EXPECTED_COUNTS["nano"][0] + 65280 * 256


@pytest.mark.parametrize("changes, field", [
    (dict(num_heads=5), "num_heads"),            # 5 does not divide 256
    (dict(num_kv_heads=3), "num_kv_heads"),      # 3 does not divide 4 heads
    (dict(hidden_size=0), "hidden_size"),
    (dict(vocab_size=-1), "vocab_size"),
    (dict(num_layers=2.5), "num_layers"),
    (dict(hidden_size=12, num_heads=4, num_kv_heads=1), "head_dim"),  # head_dim 3 is odd
    (dict(attention_scale="sqrt"), "attention_scale"),
    (dict(num_layers=-1), "num_layers"),
    (dict(num_layers=True), "num_layers"),                # a YAML `true` is not 1 layer
    (dict(intermediate_size="640"), "intermediate_size"),
    (dict(max_position_embeddings=0), "max_position_embeddings"),
    (dict(head_dim=0), "head_dim"),
    (dict(rope_theta=0.0), "rope_theta"),
    (dict(rope_theta=float("nan")), "rope_theta"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    (dict(rms_norm_eps=float("inf")), "rms_norm_eps"),
    (dict(tie_embeddings="yes"), "tie_embeddings"),
    (dict(bos_token_id=100), "bos_token_id"),             # vocab_size is 100
    (dict(eos_token_id=-1), "eos_token_id"),
    (dict(pad_token_id=1.5), "pad_token_id"),
])
def test_invalid_shapes_are_rejected_naming_the_field(changes, field):
    values = dict(vocab_size=100, hidden_size=256, intermediate_size=640, num_layers=2,
                  num_heads=4, num_kv_heads=1)
    values.update(changes)
    with pytest.raises(UserError, match=field):
        ModelConfig(**values)


@pytest.mark.parametrize("mup, field", [
    (dict(scale_emb=0.0), "scale_emb"),
    (dict(weight_decay_policy="decoupled"), "weight_decay_policy"),
    (dict(output_init="zero"), "output_init"),
    (dict(enabled="yes"), "enabled"),
    (dict(dim_model_base=0), "dim_model_base"),
    (dict(dim_model_base=64.0), "dim_model_base"),
    (dict(scale_depth=float("nan")), "scale_depth"),
    (dict(mlp_scale_depth=-1.0), "mlp_scale_depth"),
    (dict(init_std=float("inf")), "init_std"),
    (dict(output_scale=0), "output_scale"),
])
def test_invalid_mup_settings_are_rejected_naming_the_field(mup, field):
    with pytest.raises(UserError, match=field):
        preset("nano", mup=mup)


def test_multipliers_follow_the_report():
    config = preset("xl")
    assert config.embedding_multiplier == 12.0
    assert config.residual_multiplier == pytest.approx(1.4 / math.sqrt(48))
    assert config.logit_multiplier == pytest.approx(256 / 1536)
    off = preset("xl", mup={"enabled": False})
    assert (off.embedding_multiplier, off.residual_multiplier, off.logit_multiplier) == (1.0, 1.0, 1.0)


def test_native_config_json_round_trips():
    config = preset("tiny", mup={"scale_emb": 7.0, "output_scale": 2.0, "norm_lr": "hidden",
                                 "mlp_scale_depth": 0.5},
                    attention_scale="inv_head_dim", tie_embeddings=False)
    assert from_hf_config(to_hf_config(config)) == config


LLAMA_KEYS = dict(vocab_size=100, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2)


def test_minicpm_and_xmodel2_keys_turn_mup_on():
    for arch in ("MiniCPMForCausalLM", "XmodelForCausalLM"):
        config = from_hf_config({**LLAMA_KEYS, "architectures": [arch], "scale_emb": 12,
                                 "dim_model_base": 16, "scale_depth": 1.4})
        assert config.mup.enabled and config.tie_embeddings
        assert config.embedding_multiplier == 12
        assert config.residual_multiplier == pytest.approx(1.4 / 2)
        assert config.logit_multiplier == pytest.approx(16 / 64)


def test_xmodel25_keys_map_to_the_same_multipliers():
    config = from_hf_config({**LLAMA_KEYS, "architectures": ["XmodelForCausalLM"], "use_mup": True,
                             "mup_input_scale": 10.0, "mup_output_scale": 3.0,
                             "mup_attention_residual_scale": 1.6, "mup_ffn_residual_scale": 1.6,
                             "mup_base_width": 32})
    assert config.embedding_multiplier == 10.0
    assert config.residual_multiplier == pytest.approx(1.6 / 2)
    assert config.logit_multiplier == pytest.approx(3.0 / 2)
    off = from_hf_config({**LLAMA_KEYS, "architectures": ["XmodelForCausalLM"], "use_mup": False,
                          "mup_input_scale": 10.0, "mup_base_width": 32})
    assert not off.mup.enabled


def test_plain_llama_config_is_mup_off_and_untied():
    config = from_hf_config({**LLAMA_KEYS, "architectures": ["LlamaForCausalLM"]})
    assert not config.mup.enabled and not config.tie_embeddings


def test_unknown_architecture_is_named():
    with pytest.raises(UserError, match="GPT2LMHeadModel"):
        from_hf_config({**LLAMA_KEYS, "architectures": ["GPT2LMHeadModel"]})


def test_a_bad_hf_value_is_named_by_its_config_json_key():
    with pytest.raises(UserError, match=r"^cfg.json: num_hidden_layers must be a positive integer"):
        from_hf_config({**LLAMA_KEYS, "architectures": ["LlamaForCausalLM"], "num_hidden_layers": -1},
                       "cfg.json")
    with pytest.raises(UserError, match=r"^cfg.json: mup_input_scale must be a finite positive"):
        from_hf_config({**LLAMA_KEYS, "architectures": ["XmodelForCausalLM"], "use_mup": True,
                        "mup_input_scale": float("nan")}, "cfg.json")
    with pytest.raises(UserError, match=r"^cfg.json: expected a JSON object, got list"):
        from_hf_config([LLAMA_KEYS], "cfg.json")


def test_separate_mlp_residual_scale_only_where_set():
    assert preset("nano").mlp_residual_multiplier == preset("nano").residual_multiplier
    config = preset("nano", mup={"scale_depth": 2.0, "mlp_scale_depth": 0.5})
    assert config.residual_multiplier == pytest.approx(2.0 / math.sqrt(8))
    assert config.mlp_residual_multiplier == pytest.approx(0.5 / math.sqrt(8))
    off = preset("nano", mup={"enabled": False, "mlp_scale_depth": 0.5})
    assert off.mlp_residual_multiplier == 1.0
