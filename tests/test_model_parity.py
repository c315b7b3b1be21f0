"""The model is the same function as transformers' LlamaForCausalLM (μP off) and applies each
μP forward multiplier exactly once (μP on), checked against Llama with hooks that add each one.
"""

import math

import pytest
import torch

from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model

transformers = pytest.importorskip("transformers")


def tiny(**overrides) -> ModelConfig:
    values = dict(vocab_size=320, hidden_size=64, intermediate_size=160, num_layers=3, num_heads=4,
                  num_kv_heads=2, rms_norm_eps=1e-5, max_position_embeddings=128)
    values.update(overrides)
    return ModelConfig(**values)


def hf_llama(config: ModelConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """transformers' own Llama with our tensors (the μP multipliers are not in it)."""
    hf_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        tie_word_embeddings=config.tie_embeddings, attn_implementation="eager")
    model = transformers.LlamaForCausalLM(hf_config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"} and (not missing or config.tie_embeddings)
    if config.tie_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


IDS = torch.randint(0, 320, (2, 19), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("overrides", [
    dict(),                                            # GQA, tied
    dict(num_kv_heads=4, tie_embeddings=False),        # MHA, untied
    dict(num_kv_heads=1, rope_theta=500000.0),         # MQA, other RoPE base
])
def test_mup_off_equals_transformers_llama(overrides):
    config = tiny(mup={"enabled": False}, **overrides)
    ours = build_model(config, seed=3).eval()
    ref = hf_llama(config, ours.state_dict())
    with torch.no_grad():
        assert relative_error(ours(IDS), ref(IDS).logits) <= 1e-5


def test_mup_off_with_padding_mask_equals_transformers_llama():
    config = tiny(mup={"enabled": False})
    ours = build_model(config, seed=4).eval()
    ref = hf_llama(config, ours.state_dict())
    mask = torch.ones_like(IDS)
    mask[0, :5] = 0  # left padding on row 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = ours(IDS, position_ids=positions, attention_mask=mask)
        b = ref(IDS, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert relative_error(a[real], b[real]) <= 1e-5


# ---- μP on: a reference Llama with one hook per multiplier ------------------------------------

MUP = dict(scale_emb=12.0, dim_model_base=16, scale_depth=3.0)  # m = 4, residual 3/sqrt(3)
OPERATIONS = ("embedding", "attention_residual", "mlp_residual", "logits")


def reference_logits(config: ModelConfig, state: dict, counts: dict[str, int]) -> torch.Tensor:
    """Llama logits with each μP multiplier applied `counts[op]` times (1 = correct)."""
    model = hf_llama(config.replace(mup={"enabled": False}), state)
    residual = config.mup.scale_depth / math.sqrt(config.num_layers)
    mlp_residual = (config.mup.mlp_scale_depth or config.mup.scale_depth) / math.sqrt(config.num_layers)
    m = config.hidden_size / config.mup.dim_model_base

    def scale_output(factor: float):
        def hook(module, inputs, output):
            if isinstance(output, tuple):
                return (output[0] * factor, *output[1:])
            return output * factor
        return hook

    model.model.embed_tokens.register_forward_hook(scale_output(config.mup.scale_emb ** counts["embedding"]))
    for layer in model.model.layers:
        layer.self_attn.register_forward_hook(scale_output(residual ** counts["attention_residual"]))
        layer.mlp.register_forward_hook(scale_output(mlp_residual ** counts["mlp_residual"]))
    model.lm_head.register_forward_pre_hook(lambda module, inputs: (inputs[0] / m ** counts["logits"],))
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("operation", OPERATIONS)
def test_each_mup_operation_is_applied_exactly_once(operation):
    config = tiny(mup=MUP)
    ours = build_model(config, seed=5).eval()
    state = ours.state_dict()
    with torch.no_grad():
        logits = ours(IDS)
    once = {op: 1 for op in OPERATIONS}
    assert relative_error(logits, reference_logits(config, state, once)) <= 1e-5
    # The comparison can tell: without this multiplier, or with it twice, the logits differ.
    for wrong in (0, 2):
        assert relative_error(logits, reference_logits(config, state, {**once, operation: wrong})) > 1e-3


@pytest.mark.parametrize("operation", ("attention_residual", "mlp_residual"))
def test_separate_mlp_residual_scale_applies_to_the_mlp_branch_only(operation):
    config = tiny(mup={**MUP, "mlp_scale_depth": 0.5})
    ours = build_model(config, seed=8).eval()
    with torch.no_grad():
        logits = ours(IDS)
    once = {op: 1 for op in OPERATIONS}
    assert relative_error(logits, reference_logits(config, ours.state_dict(), once)) <= 1e-5
    assert relative_error(logits, reference_logits(config, ours.state_dict(), {**once, operation: 0})) > 1e-3


def test_logits_by_hand_with_output_scale():
    config = tiny(mup={**MUP, "output_scale": 3.0}, tie_embeddings=False)
    model = build_model(config, seed=6).eval()
    with torch.no_grad():
        hidden = model.hidden_states(IDS)
        expected = (hidden / 4.0) @ model.lm_head.weight.T * 3.0
        assert relative_error(model(IDS), expected) <= 1e-5


def test_inv_head_dim_attention_scale_equals_llama_with_that_scale():
    config = tiny(mup={"enabled": False}, attention_scale="inv_head_dim")
    ours = build_model(config, seed=7).eval()
    ref = hf_llama(config, ours.state_dict())
    for layer in ref.model.layers:
        layer.self_attn.scaling = 1.0 / config.head_dim
    with torch.no_grad():
        assert relative_error(ours(IDS), ref(IDS).logits) <= 1e-5
        # and it is not the default scale
        default = hf_llama(config, ours.state_dict())(IDS).logits
        assert relative_error(ours(IDS), default) > 1e-3
