"""Xmodel-2.5 parity: an Xmodel-2.5 folder (config.json with `mup_*` keys + safetensors) imported by
`xmodel2 import`, and its plain-Llama export, give the logits of the published formula.

The reference below is written from the Xmodel-2.5 release (Megatron `gpt_model.py` and
`transformer_layer.py`, `configuration_xmodel2.py`), in plain torch, without any of our classes:

    h_0   = embed[ids] * mup_input_scale
    h    += attn(rmsnorm(h)) * mup_attention_residual_scale / sqrt(L)   (softmax scale 1/head_dim)
    h    += mlp(rmsnorm(h))  * mup_ffn_residual_scale / sqrt(L)         (SwiGLU)
    logits = rmsnorm(h) @ embed.T * mup_output_scale / (hidden / mup_base_width)   (tied head)

With `use_mup: false` every multiplier is 1 and the softmax scale is Llama's 1/sqrt(head_dim).
"""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from xmodel2.cli import main
from xmodel2.model.folder import load_model_folder

transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2)
MUP_ON = dict(use_mup=True, mup_input_scale=3.0, mup_output_scale=2.5,
              mup_attention_residual_scale=1.7, mup_ffn_residual_scale=0.6, mup_base_width=16)
IDS = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(11))
TOLERANCE = 1e-5


def xmodel25_config(mup: dict) -> dict:
    """A config.json as Xmodel-2.5's HF config class writes it (including its auto_map, which
    no importer may follow)."""
    config = {"architectures": ["XmodelForCausalLM"], "model_type": "xmodel", **SHAPE,
              "hidden_act": "silu", "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
              "rope_theta": 500000.0, "tie_word_embeddings": True, "initializer_range": 0.1,
              "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "float32",
              "auto_map": {"AutoConfig": "configuration_xmodel2.XmodelConfig",
                           "AutoModelForCausalLM": "modeling_xmodel2.XmodelForCausalLM"},
              **mup}
    if mup.get("use_mup"):
        config["mup_width_multiplier"] = SHAPE["hidden_size"] / mup["mup_base_width"]
    return config


def random_weights(seed: int) -> dict[str, torch.Tensor]:
    """Tensors large enough that the attention scale visibly matters (attention scores of order
    1-3, logits up to about 5): an absolute 1e-5 is then about 2e-6 of the largest logit."""
    g = torch.Generator().manual_seed(seed)
    h, f, heads, kv = (SHAPE[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                          "num_key_value_heads"))
    d = h // heads

    def normal(*shape, std):
        return torch.randn(*shape, generator=g) * std

    weights = {"model.embed_tokens.weight": normal(SHAPE["vocab_size"], h, std=0.2),
               "model.norm.weight": 1 + normal(h, std=0.1)}
    for i in range(SHAPE["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights.update({
            p + "input_layernorm.weight": 1 + normal(h, std=0.1),
            p + "post_attention_layernorm.weight": 1 + normal(h, std=0.1),
            p + "self_attn.q_proj.weight": normal(heads * d, h, std=0.25),
            p + "self_attn.k_proj.weight": normal(kv * d, h, std=0.25),
            p + "self_attn.v_proj.weight": normal(kv * d, h, std=0.2),
            p + "self_attn.o_proj.weight": normal(h, heads * d, std=0.2),
            p + "mlp.gate_proj.weight": normal(f, h, std=0.2),
            p + "mlp.up_proj.weight": normal(f, h, std=0.2),
            p + "mlp.down_proj.weight": normal(h, f, std=0.2),
        })
    return weights


# ---- the published formula, in plain torch -----------------------------------------------------

def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    return gain * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Half-split rotary embedding of (batch, heads, seq, d) at positions 0..seq-1."""
    d, seq = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    first, second = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat((-second, first), -1) * sin


def attention(x: torch.Tensor, w: dict, p: str, cfg: dict, softmax_scale: float) -> torch.Tensor:
    batch, seq, _ = x.shape
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"] // heads

    def split(t: torch.Tensor, n: int) -> torch.Tensor:
        return t.view(batch, seq, n, d).transpose(1, 2)

    q = rope(split(x @ w[p + "self_attn.q_proj.weight"].T, heads), cfg["rope_theta"])
    k = rope(split(x @ w[p + "self_attn.k_proj.weight"].T, kv), cfg["rope_theta"])
    v = split(x @ w[p + "self_attn.v_proj.weight"].T, kv)
    k, v = k.repeat_interleave(heads // kv, dim=1), v.repeat_interleave(heads // kv, dim=1)
    scores = (q @ k.transpose(-1, -2)) * softmax_scale
    future = torch.ones(seq, seq, dtype=torch.bool).triu(1)
    probs = scores.masked_fill(future, float("-inf")).softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(batch, seq, heads * d)
    return out @ w[p + "self_attn.o_proj.weight"].T


def swiglu(x: torch.Tensor, w: dict, p: str) -> torch.Tensor:
    gate = torch.nn.functional.silu(x @ w[p + "mlp.gate_proj.weight"].T)
    return (gate * (x @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T


def reference_logits(cfg: dict, w: dict, ids: torch.Tensor, softmax_scale: float | None = None) -> torch.Tensor:
    layers, hidden, eps = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["rms_norm_eps"]
    head_dim = hidden // cfg["num_attention_heads"]
    mup = cfg.get("use_mup", False)
    if softmax_scale is None:
        softmax_scale = 1.0 / head_dim if mup else 1.0 / math.sqrt(head_dim)
    attention_branch = cfg["mup_attention_residual_scale"] / math.sqrt(layers) if mup else 1.0
    mlp_branch = cfg["mup_ffn_residual_scale"] / math.sqrt(layers) if mup else 1.0
    embed = w["model.embed_tokens.weight"]
    h = embed[ids] * (cfg["mup_input_scale"] if mup else 1.0)
    for i in range(layers):
        p = f"model.layers.{i}."
        h = h + attention(rms_norm(h, w[p + "input_layernorm.weight"], eps), w, p, cfg,
                          softmax_scale) * attention_branch
        h = h + swiglu(rms_norm(h, w[p + "post_attention_layernorm.weight"], eps), w, p) * mlp_branch
    logits = rms_norm(h, w["model.norm.weight"], eps) @ embed.T
    if mup:
        logits = logits * cfg["mup_output_scale"] / (hidden / cfg["mup_base_width"])
    return logits


# ---- the checks ----------------------------------------------------------------------------------

def write_xmodel25_folder(folder, cfg: dict, weights: dict) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(weights, str(folder / "model.safetensors"))


def greedy(next_logits, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy continuation, recomputing the whole sequence at every step."""
    for _ in range(steps):
        ids = torch.cat([ids, next_logits(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.fixture(params=["mup_on", "mup_off"])
def xmodel25(request, tmp_path):
    cfg = xmodel25_config(MUP_ON if request.param == "mup_on" else {"use_mup": False})
    weights = random_weights(seed=5)
    write_xmodel25_folder(tmp_path / "x25", cfg, weights)
    return cfg, weights, tmp_path


def test_import_and_llama_export_equal_the_published_formula(xmodel25):
    cfg, weights, tmp = xmodel25
    with torch.no_grad():
        expected = reference_logits(cfg, weights, IDS)
    assert main(["import", str(tmp / "x25"), "--out", str(tmp / "ours")]) == 0
    ours = load_model_folder(tmp / "ours")
    assert main(["export", str(tmp / "ours"), "--format", "llama", "--out", str(tmp / "llama")]) == 0
    llama = transformers.LlamaForCausalLM.from_pretrained(
        tmp / "llama", trust_remote_code=False, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ours_error = (ours(IDS) - expected).abs().max().item()
        llama_error = (llama(IDS).logits - expected).abs().max().item()
        print(f"max |logits - reference|: imported {ours_error:.2e}, Llama export {llama_error:.2e} "
              f"(logits up to {expected.abs().max().item():.1f})")
        assert ours_error <= TOLERANCE and llama_error <= TOLERANCE

        reference_tokens = greedy(lambda ids: reference_logits(cfg, weights, ids), IDS, steps=8)
        assert torch.equal(greedy(ours, IDS, steps=8), reference_tokens)
        assert torch.equal(greedy(lambda ids: llama(ids).logits, IDS, steps=8), reference_tokens)


def test_the_reference_tells_the_attention_scales_apart(xmodel25):
    """The comparison above can fail: with μP on, the Llama scale 1/sqrt(head_dim) is far off
    (and with μP off, 1/head_dim is)."""
    cfg, weights, _ = xmodel25
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    wrong = 1.0 / math.sqrt(head_dim) if cfg["use_mup"] else 1.0 / head_dim
    with torch.no_grad():
        right_logits = reference_logits(cfg, weights, IDS)
        wrong_logits = reference_logits(cfg, weights, IDS, softmax_scale=wrong)
    assert (right_logits - wrong_logits).abs().max().item() > 100 * TOLERANCE
    assert not torch.equal(right_logits.argmax(-1), wrong_logits.argmax(-1))


def test_xmodel25_residual_scales_stay_separate_and_map_to_their_keys(tmp_path):
    from xmodel2.model.config import from_hf_config

    config = from_hf_config(xmodel25_config(MUP_ON))
    assert config.attention_scale == "inv_head_dim"
    assert config.residual_multiplier == pytest.approx(1.7 / math.sqrt(3))
    assert config.mlp_residual_multiplier == pytest.approx(0.6 / math.sqrt(3))
    assert config.embedding_multiplier == 3.0
    assert config.logit_multiplier == pytest.approx(2.5 / 4)
    # an absent use_mup is the published class's default, False
    plain = from_hf_config({k: v for k, v in xmodel25_config(MUP_ON).items() if k != "use_mup"})
    assert not plain.mup.enabled and plain.attention_scale == "inv_sqrt_head_dim"
