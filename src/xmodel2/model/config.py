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


class ConfigFieldError(UserError):
    """One field out of its range. `field` (e.g. "num_layers", "mup.scale_emb") lets a reader
    that got the value under another name (a config.json key) name that key instead."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"model.{field} {problem}")
        self.field, self.problem = field, problem


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
    # The MLP branch's own scale_depth (Xmodel-2.5 tunes the two branches separately);
    # None: the same as scale_depth, as in MiniCPM and Xmodel-2.
    mlp_scale_depth: float | None = None
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
        _check_bool("mup.enabled", self.enabled)
        _check_positive_int("mup.dim_model_base", self.dim_model_base)
        for name in ("scale_emb", "scale_depth", "init_std", "output_scale"):
            _check_positive_real(f"mup.{name}", getattr(self, name))
        if self.mlp_scale_depth is not None:
            _check_positive_real("mup.mlp_scale_depth", self.mlp_scale_depth)
        _check_choice("mup.weight_decay_policy", self.weight_decay_policy, WEIGHT_DECAY_POLICIES)
        _check_choice("mup.norm_lr", self.norm_lr, NORM_LR_POLICIES)
        _check_choice("mup.output_init", self.output_init, OUTPUT_INITS)


SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
               "num_kv_heads", "max_position_embeddings")


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
        self.validate()

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Each field against its own range first, then the shape relations between them."""
        for name in SIZE_FIELDS:
            _check_positive_int(name, getattr(self, name))
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads
        _check_positive_int("head_dim", self.head_dim)
        for name in ("rope_theta", "rms_norm_eps"):
            _check_positive_real(name, getattr(self, name))
            setattr(self, name, float(getattr(self, name)))
        _check_bool("tie_embeddings", self.tie_embeddings)
        _check_choice("attention_scale", self.attention_scale, ATTENTION_SCALES)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            self._check_token_id(name)
        self._check_shapes()
        if not isinstance(self.mup, MupConfig):
            raise ConfigFieldError("mup", f"must be a mapping of μP settings, got {self.mup!r}")
        self.mup.validate()

    def _check_shapes(self) -> None:
        if self.head_dim * self.num_heads != self.hidden_size:
            raise ConfigFieldError(
                "num_heads", f"({self.num_heads}) heads of head_dim {self.head_dim} do not make up "
                             f"hidden_size {self.hidden_size}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigFieldError(
                "num_kv_heads", f"({self.num_kv_heads}) must divide the {self.num_heads} attention heads")
        if self.head_dim % 2:
            raise ConfigFieldError("head_dim", f"({self.head_dim}) must be even for RoPE")

    def _check_token_id(self, name: str) -> None:
        value = getattr(self, name)
        if value is None:
            return
        if not _is_int(value):
            raise ConfigFieldError(name, f"must be an integer token id or null, got {value!r}")
        # Some Llama configs write pad_token_id -1 for "none"; bos/eos must be real tokens.
        low = -1 if name == "pad_token_id" else 0
        if not low <= value < self.vocab_size:
            raise ConfigFieldError(name, f"must be a token id below vocab_size {self.vocab_size}, "
                                         f"got {value}")

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
        """The attention branch's multiplier, scale_depth / sqrt(num_layers)."""
        return self.mup.scale_depth / math.sqrt(self.num_layers) if self.mup.enabled else 1.0

    @property
    def mlp_residual_multiplier(self) -> float:
        """The MLP branch's: the same as the attention branch's unless mup.mlp_scale_depth is set."""
        if not self.mup.enabled or self.mup.mlp_scale_depth is None:
            return self.residual_multiplier
        return self.mup.mlp_scale_depth / math.sqrt(self.num_layers)

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
    # name: (hidden, intermediate, layers, heads, kv heads); xl is the released Xmodel-2 1.2B
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
        "scale_depth_mlp": config.mup.mlp_scale_depth,
        "initializer_range": config.mup.init_std,
        "mup_output_scale": config.mup.output_scale,
        "mup_weight_decay_policy": config.mup.weight_decay_policy,
        "mup_norm_lr": config.mup.norm_lr,
        "mup_output_init": config.mup.output_init,
    }
    return out


SUPPORTED_ARCHITECTURES = ("Xmodel2ForCausalLM", "XmodelForCausalLM", "LlamaForCausalLM",
                           "MiniCPMForCausalLM", "MistralForCausalLM")

# config.json key of each ModelConfig field, so that an error names the key the user sees.
LLAMA_KEY_OF_FIELD = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
                      "num_kv_heads": "num_key_value_heads", "tie_embeddings": "tie_word_embeddings",
                      "mup.init_std": "initializer_range", "mup.enabled": "use_mup",
                      "mup.output_scale": "mup_output_scale"}
MINICPM_KEY_OF_FIELD = {**LLAMA_KEY_OF_FIELD, "mup.scale_emb": "scale_emb",
                        "mup.dim_model_base": "dim_model_base", "mup.scale_depth": "scale_depth",
                        "mup.mlp_scale_depth": "scale_depth_mlp",
                        "mup.weight_decay_policy": "mup_weight_decay_policy",
                        "mup.norm_lr": "mup_norm_lr", "mup.output_init": "mup_output_init"}
# Xmodel-2.5 (configuration_xmodel2.py / Megatron --mup-* flags). Its HF config class writes
# only values that differ from these defaults, so an absent key means the default.
XMODEL25_DEFAULTS = {"use_mup": False, "mup_input_scale": 12.0, "mup_output_scale": 1.0,
                     "mup_attention_residual_scale": 1.4, "mup_ffn_residual_scale": 1.4,
                     "mup_base_width": 256}
XMODEL25_KEY_OF_FIELD = {**MINICPM_KEY_OF_FIELD, "mup.scale_emb": "mup_input_scale",
                         "mup.dim_model_base": "mup_base_width",
                         "mup.scale_depth": "mup_attention_residual_scale",
                         "mup.mlp_scale_depth": "mup_ffn_residual_scale"}
MINICPM_MUP_KEYS = ("scale_emb", "dim_model_base", "scale_depth")


def from_hf_config(hf: Any, source: str = "config.json") -> ModelConfig:
    """Read a Llama, MiniCPM, Xmodel-2 (MiniCPM keys) or Xmodel-2.5 (`mup_*` keys) config.json.

    Every value is checked by ModelConfig; an error names `source` and the config.json key.
    """
    if not isinstance(hf, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(hf).__name__}")
    arch = _architecture(hf, source)
    _reject_unsupported_features(hf, source)
    convention = _mup_convention(hf)
    key_of_field = {"llama": LLAMA_KEY_OF_FIELD, "minicpm": MINICPM_KEY_OF_FIELD,
                    "xmodel25": XMODEL25_KEY_OF_FIELD}[convention]
    try:
        mup = _mup_from_hf(hf, convention, source)
        return ModelConfig(**_shape_fields(hf, arch, source), mup=mup,
                           attention_scale=_attention_scale(hf, convention, mup))
    except ConfigFieldError as exc:
        raise UserError(f"{source}: {key_of_field.get(exc.field, exc.field)} {exc.problem}") from None
    except TypeError as exc:  # a MupConfig built from a value of the wrong kind
        raise UserError(f"{source}: {exc}") from None


def _architecture(hf: dict[str, Any], source: str) -> str:
    architectures = hf.get("architectures") or [hf.get("model_type", "?")]
    if not isinstance(architectures, list) or not isinstance(architectures[0], str):
        raise UserError(f"{source}: architectures must be a list of class names, got {architectures!r}")
    arch = architectures[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"{source}: unsupported architecture {arch!r}; "
                        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return arch


def _reject_unsupported_features(hf: dict[str, Any], source: str) -> None:
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise UserError(f"{source}: {key}=true is not supported (the model has no biases)")
    for key in ("rope_scaling", "rope_parameters"):
        rope = hf.get(key)
        if rope is None:
            continue
        if not isinstance(rope, dict):
            raise UserError(f"{source}: {key} must be an object or null, got {rope!r}")
        rope_type = rope.get("rope_type", rope.get("type"))
        if rope_type not in (None, "default"):
            raise UserError(f"{source}: {key} type {rope_type!r} is not supported")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"{source}: hidden_act {act!r} is not supported (SwiGLU uses silu)")


def _shape_fields(hf: dict[str, Any], arch: str, source: str) -> dict[str, Any]:
    def need(key: str) -> Any:
        if key not in hf:
            raise UserError(f"{source}: missing key {key!r}")
        return hf[key]

    heads = need("num_attention_heads")
    eos = hf.get("eos_token_id", 2)
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    rope_theta = hf.get("rope_theta")
    if rope_theta is None:
        rope_theta = (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return dict(
        vocab_size=need("vocab_size"),
        hidden_size=need("hidden_size"),
        intermediate_size=need("intermediate_size"),
        num_layers=need("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim"),
        rope_theta=rope_theta,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        # Hugging Face's own defaults: Llama and Mistral untied, MiniCPM and Xmodel tied.
        tie_embeddings=hf.get("tie_word_embeddings",
                              arch not in ("LlamaForCausalLM", "MistralForCausalLM")),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos,
        pad_token_id=hf.get("pad_token_id"),
    )


def _mup_convention(hf: dict[str, Any]) -> str:
    """"minicpm" (MiniCPM, Xmodel-2 and our own folders), "xmodel25" (`mup_*` keys) or "llama"."""
    if any(key in hf for key in MINICPM_MUP_KEYS):
        return "minicpm"
    if any(key in hf for key in (*XMODEL25_DEFAULTS, "mup_width_multiplier")):
        return "xmodel25"
    return "llama"


def _mup_from_hf(hf: dict[str, Any], convention: str, source: str) -> MupConfig:
    common = dict(init_std=hf.get("initializer_range", 0.1),
                  weight_decay_policy=hf.get("mup_weight_decay_policy", "coupled"),
                  norm_lr=hf.get("mup_norm_lr", "base"),
                  output_init=hf.get("mup_output_init", "hidden"))
    if convention == "xmodel25":
        return _xmodel25_mup(hf, common, source)
    enabled = hf.get("use_mup", True)  # MiniCPM has no switch: its multipliers always apply
    if convention == "minicpm" and enabled is not False:
        return MupConfig(enabled=enabled, scale_emb=hf.get("scale_emb", 1.0),
                         dim_model_base=hf.get("dim_model_base", hf.get("hidden_size")),
                         scale_depth=hf.get("scale_depth", _sqrt_or_none(hf.get("num_hidden_layers"))),
                         mlp_scale_depth=hf.get("scale_depth_mlp"),
                         output_scale=hf.get("mup_output_scale", 1.0), **common)
    return MupConfig(enabled=False, **common)


def _xmodel25_mup(hf: dict[str, Any], common: dict[str, Any], source: str) -> MupConfig:
    """The published Megatron code: embedding × mup_input_scale; attention and MLP branches ×
    mup_{attention,ffn}_residual_scale / sqrt(L); logits × mup_output_scale / (hidden / base)."""
    value = {key: hf.get(key, default) for key, default in XMODEL25_DEFAULTS.items()}
    if value["use_mup"] is False:
        return MupConfig(enabled=False, **common)
    attention, mlp = value["mup_attention_residual_scale"], value["mup_ffn_residual_scale"]
    mup = MupConfig(enabled=value["use_mup"], scale_emb=value["mup_input_scale"],
                    dim_model_base=value["mup_base_width"], scale_depth=attention,
                    mlp_scale_depth=None if mlp == attention else mlp,
                    output_scale=value["mup_output_scale"], **common)
    _check_width_multiplier(hf, mup, source)
    return mup


def _check_width_multiplier(hf: dict[str, Any], mup: MupConfig, source: str) -> None:
    """`mup_width_multiplier` is derived (hidden / base) in the published config class; a file
    whose stored value disagrees was edited by hand, and which one it meant is unknowable."""
    stored, hidden, base = hf.get("mup_width_multiplier"), hf.get("hidden_size"), mup.dim_model_base
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (stored, hidden, base))
    if numbers and base and not math.isclose(stored, hidden / base, rel_tol=1e-6):
        raise UserError(f"{source}: mup_width_multiplier {stored} disagrees with hidden_size / "
                        f"mup_base_width = {hidden} / {base}")


def _attention_scale(hf: dict[str, Any], convention: str, mup: MupConfig) -> Any:
    """Our own folders say which; Xmodel-2.5 with μP on divides the logits by head_dim."""
    if "attention_scale" in hf:
        return hf["attention_scale"]
    if convention == "xmodel25" and mup.enabled:
        return "inv_head_dim"
    return "inv_sqrt_head_dim"


def _sqrt_or_none(value: Any) -> Any:
    # MiniCPM's default scale_depth is sqrt(num_layers); a bad layer count is reported by ModelConfig.
    return math.sqrt(value) if _is_int(value) and value > 0 else None


# ---- helpers --------------------------------------------------------------------------------------

def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigFieldError(name, f"must be one of {', '.join(choices)}, got {value!r}"
                                     f"{_did_you_mean(str(value), choices)}")


def _is_int(value: Any) -> bool:
    # JSON and YAML booleans are ints to Python; a size of `true` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value <= 0:
        raise ConfigFieldError(name, f"must be a positive integer, got {value!r}")


def _check_positive_real(name: str, value: Any) -> None:
    real = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not real or not math.isfinite(value) or value <= 0:
        raise ConfigFieldError(name, f"must be a finite positive number, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigFieldError(name, f"must be true or false, got {value!r}")


def _did_you_mean(word: str, candidates: Any) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def reject_unknown_keys(data: dict[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise UserError(f"unknown key {where}.{key}{_did_you_mean(key, known)}")
