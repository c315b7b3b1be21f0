"""One typed model configuration, the named presets, and the Hugging Face `config.json` mapping.

The μP section carries the report's five multipliers plus the choices that references make
differently (weight-decay rule, norm-gain learning rate, output-projection init, Adam eps); each
is a field with a default so a run states exactly what it did.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from xmodel2.errors import UserError

ATTENTION_SCALES = ("inv_sqrt_head_dim", "inv_head_dim")
WEIGHT_DECAY_POLICIES = ("coupled", "independent")
NORM_LR_POLICIES = ("base", "hidden")
OUTPUT_INITS = ("hidden", "depth_scaled")


@dataclass
class MupConfig:
    """μP multipliers (MiniCPM / Xmodel-2 names) and the policies around them.

    With `enabled=False` every multiplier is 1 and the learning rate is the same for all groups:
    the model is a plain Llama trained with standard parameterization.
    """

    enabled: bool = True
    scale_emb: float = 12.0
    dim_model_base: int = 256
    scale_depth: float = 1.4
    init_std: float = 0.1
    # Xmodel-2.5's `mup_output_scale`: logits = output_scale * lm_head(h / m). 1 in MiniCPM/Xmodel-2.
    output_scale: float = 1.0
    # "coupled": AdamW decays by lr_group * wd, so hidden matrices decay m times less per step
    # (what torch.optim.AdamW does with per-group LRs; MiniCPM's and Xmodel-2's released code).
    # "independent": every group decays by lr_base * wd per step, the same at every width, which
    # keeps the equilibrium weight norm width-independent (Wortsman et al. 2023).
    weight_decay_policy: str = "coupled"
    # Norm gains are 1-D, so μP gives them the base LR ("base"); "hidden" divides it by m too.
    norm_lr: str = "base"
    # o_proj / down_proj init: "hidden" uses the same init_std/sqrt(m) as other hidden matrices
    # (MiniCPM); "depth_scaled" divides it further by sqrt(2 * num_layers) (GPT-2 / OLMo style).
    output_init: str = "hidden"

    def validate(self) -> None:
        _check_choice("mup.weight_decay_policy", self.weight_decay_policy, WEIGHT_DECAY_POLICIES)
        _check_choice("mup.norm_lr", self.norm_lr, NORM_LR_POLICIES)
        _check_choice("mup.output_init", self.output_init, OUTPUT_INITS)
        for name in ("scale_emb", "dim_model_base", "scale_depth", "init_std", "output_scale"):
            if not getattr(self, name) > 0:
                raise UserError(f"mup.{name} must be positive, got {getattr(self, name)!r}")


@dataclass
class ModelConfig:
    vocab_size: int = 65280
    hidden_size: int = 1536
    intermediate_size: int = 3840
    num_layers: int = 48
    num_heads: int = 24
    num_kv_heads: int = 8
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    tie_embeddings: bool = True
    attention_scale: str = "inv_sqrt_head_dim"
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    mup: MupConfig = field(default_factory=MupConfig)

    def __post_init__(self) -> None:
        if isinstance(self.mup, dict):
            self.mup = MupConfig(**self.mup)
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads if self.num_heads > 0 else 0
        self.validate()

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "max_position_embeddings", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"model.{name} must be a positive integer, got {value!r}")
        if self.head_dim * self.num_heads != self.hidden_size:
            raise UserError(
                f"model.num_heads={self.num_heads} does not divide model.hidden_size="
                f"{self.hidden_size} into head_dim={self.head_dim}")
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"model.num_kv_heads={self.num_kv_heads} must divide "
                            f"model.num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise UserError(f"model.head_dim={self.head_dim} must be even for RoPE")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise UserError("model.rope_theta and model.rms_norm_eps must be positive")
        _check_choice("model.attention_scale", self.attention_scale, ATTENTION_SCALES)
        self.mup.validate()

    # ---- derived multipliers (all 1 with μP off) -----------------------------------------------
    @property
    def width_multiplier(self) -> float:
        """m = hidden / dim_model_base: the μP width ratio (1 with μP off)."""
        return self.hidden_size / self.mup.dim_model_base if self.mup.enabled else 1.0

    @property
    def embedding_multiplier(self) -> float:
        return self.mup.scale_emb if self.mup.enabled else 1.0

    @property
    def residual_multiplier(self) -> float:
        return self.mup.scale_depth / math.sqrt(self.num_layers) if self.mup.enabled else 1.0

    @property
    def logit_multiplier(self) -> float:
        if not self.mup.enabled:
            return 1.0
        return self.mup.output_scale / self.width_multiplier

    @property
    def attention_softmax_scale(self) -> float:
        if self.attention_scale == "inv_head_dim":
            return 1.0 / self.head_dim
        return 1.0 / math.sqrt(self.head_dim)

    # ---- parameter counts ---------------------------------------------------------------------
    def num_parameters(self, embeddings: bool = True) -> int:
        h, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attention = h * self.num_heads * hd * 2 + h * self.num_kv_heads * hd * 2
        per_layer = attention + 3 * h * f + 2 * h
        body = self.num_layers * per_layer + h
        if not embeddings:
            return body
        emb = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        return body + emb

    # ---- dict round trip ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model") -> "ModelConfig":
        data = dict(data)
        mup = data.pop("mup", {}) or {}
        reject_unknown_keys(data, cls, where)
        reject_unknown_keys(mup, MupConfig, f"{where}.mup")
        return cls(**data, mup=MupConfig(**mup))

    def replace(self, **changes: Any) -> "ModelConfig":
        mup_changes = changes.pop("mup", None)
        mup = dataclasses.replace(self.mup, **mup_changes) if mup_changes else self.mup
        return dataclasses.replace(self, mup=mup, **changes)


PRESET_SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    # name: (hidden, intermediate, layers, heads, kv heads), DESIGN §1
    "nano": (256, 640, 8, 4, 1),
    "micro": (384, 960, 12, 6, 1),
    "tiny": (512, 1280, 18, 8, 4),
    "small": (576, 1440, 30, 9, 3),
    "medium": (960, 2400, 32, 15, 5),
    "xl": (1536, 3840, 48, 24, 8),
    "2B": (2304, 5760, 40, 36, 6),
    "4B": (2560, 6400, 62, 40, 8),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named family member with the released vocabulary and μP values; overrides win."""
    if name not in PRESET_SHAPES:
        raise UserError(f"unknown model preset {name!r}{_did_you_mean(name, PRESET_SHAPES)}; "
                        f"choose one of {', '.join(PRESET_SHAPES)}")
    h, f, n_layers, heads, kv = PRESET_SHAPES[name]
    values: dict[str, Any] = dict(hidden_size=h, intermediate_size=f, num_layers=n_layers,
                                  num_heads=heads, num_kv_heads=kv)
    mup = overrides.pop("mup", None)
    values.update(overrides)
    values.pop("head_dim", None)
    config = ModelConfig(**values)
    if mup:
        config = config.replace(mup=mup)
    return config


# ---- Hugging Face config.json ---------------------------------------------------------------------

def llama_keys(config: ModelConfig) -> dict[str, Any]:
    """The shape keys a Llama config.json has (shared by our native and Llama exports)."""
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rope_theta": config.rope_theta,
        "rms_norm_eps": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
    """Our native `config.json`: Llama keys plus MiniCPM-named μP keys and our policy fields."""
    out: dict[str, Any] = {
        "architectures": ["Xmodel2ForCausalLM"],
        "model_type": "xmodel2",
        **llama_keys(config),
        "tie_word_embeddings": config.tie_embeddings,
        "attention_scale": config.attention_scale,
        "torch_dtype": "float32",
        "use_mup": config.mup.enabled,
        "scale_emb": config.mup.scale_emb,
        "dim_model_base": config.mup.dim_model_base,
        "scale_depth": config.mup.scale_depth,
        "initializer_range": config.mup.init_std,
        "mup_output_scale": config.mup.output_scale,
        "mup_weight_decay_policy": config.mup.weight_decay_policy,
        "mup_norm_lr": config.mup.norm_lr,
        "mup_output_init": config.mup.output_init,
    }
    return out


SUPPORTED_ARCHITECTURES = ("Xmodel2ForCausalLM", "XmodelForCausalLM", "LlamaForCausalLM",
                           "MiniCPMForCausalLM", "MistralForCausalLM")


def from_hf_config(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Read a Llama, MiniCPM, Xmodel-2 (MiniCPM keys) or Xmodel-2.5 (`mup_*` keys) config.json."""
    architectures = hf.get("architectures") or [hf.get("model_type", "?")]
    arch = architectures[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"{source}: unsupported architecture {arch!r}; "
                        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise UserError(f"{source}: {key}=true is not supported (the model has no biases)")
    if hf.get("rope_scaling"):
        rope_type = (hf["rope_scaling"] or {}).get("rope_type", hf["rope_scaling"].get("type"))
        if rope_type not in (None, "default"):
            raise UserError(f"{source}: rope_scaling {rope_type!r} is not supported")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"{source}: hidden_act {act!r} is not supported (SwiGLU uses silu)")

    def need(key: str) -> Any:
        if key not in hf:
            raise UserError(f"{source}: missing key {key!r}")
        return hf[key]

    heads = need("num_attention_heads")
    mup = _mup_from_hf(hf, arch)
    eos = hf.get("eos_token_id", 2)
    if isinstance(eos, list):
        eos = eos[0]
    rope_theta = hf.get("rope_theta")
    if rope_theta is None:
        rope_theta = (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return ModelConfig(
        vocab_size=need("vocab_size"),
        hidden_size=need("hidden_size"),
        intermediate_size=need("intermediate_size"),
        num_layers=need("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or need("hidden_size") // heads,
        rope_theta=float(rope_theta),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        # Hugging Face's own defaults: Llama and Mistral untied, MiniCPM and Xmodel tied.
        tie_embeddings=bool(hf.get("tie_word_embeddings",
                                   arch not in ("LlamaForCausalLM", "MistralForCausalLM"))),
        attention_scale=hf.get("attention_scale", "inv_sqrt_head_dim"),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos,
        pad_token_id=hf.get("pad_token_id"),
        mup=mup,
    )


def _mup_from_hf(hf: dict[str, Any], arch: str) -> MupConfig:
    init_std = float(hf.get("initializer_range", 0.1))
    policies = dict(weight_decay_policy=hf.get("mup_weight_decay_policy", "coupled"),
                    norm_lr=hf.get("mup_norm_lr", "base"),
                    output_init=hf.get("mup_output_init", "hidden"))
    if "mup_base_width" in hf or "mup_input_scale" in hf:
        # Xmodel-2.5 names. Its Megatron code multiplies the embedding by mup_input_scale and the
        # logits by mup_output_scale / m; the residual scales default to 1.4, MiniCPM's
        # scale_depth, and are read as such (branch multiplier = scale / sqrt(num_layers)).
        if not hf.get("use_mup", True):
            return MupConfig(enabled=False, init_std=init_std, **policies)
        attn_res = float(hf.get("mup_attention_residual_scale", 1.4))
        mlp_res = float(hf.get("mup_ffn_residual_scale", attn_res))
        if abs(attn_res - mlp_res) > 1e-12:
            raise UserError("config.json: different attention and MLP residual scales are "
                            "not supported")
        return MupConfig(enabled=True, scale_emb=float(hf.get("mup_input_scale", 12.0)),
                         dim_model_base=int(hf.get("mup_base_width", 256)),
                         scale_depth=attn_res, init_std=init_std,
                         output_scale=float(hf.get("mup_output_scale", 1.0)), **policies)
    if "scale_emb" in hf or "dim_model_base" in hf or "scale_depth" in hf:
        if not hf.get("use_mup", True):
            return MupConfig(enabled=False, init_std=init_std, **policies)
        return MupConfig(enabled=True, scale_emb=float(hf.get("scale_emb", 1.0)),
                         dim_model_base=int(hf.get("dim_model_base", hf["hidden_size"])),
                         scale_depth=float(hf.get("scale_depth", math.sqrt(hf["num_hidden_layers"]))),
                         init_std=init_std, output_scale=float(hf.get("mup_output_scale", 1.0)),
                         **policies)
    return MupConfig(enabled=False, init_std=init_std, **policies)


# ---- helpers --------------------------------------------------------------------------------------

def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, got {value!r}"
                        f"{_did_you_mean(str(value), choices)}")


def _did_you_mean(word: str, candidates: Any) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def reject_unknown_keys(data: dict[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise UserError(f"unknown key {where}.{key}{_did_you_mean(key, known)}")
