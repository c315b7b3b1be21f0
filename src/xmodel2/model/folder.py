"""Model folders: config.json, model.safetensors, tokenizer files, generation_config.json.

Every checkpoint is one of these. Weights are read only through safetensors (never unpickled).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from xmodel2.errors import UserError
from xmodel2.fileio import atomic_directory, atomic_write_json, read_json
from xmodel2.model.config import ModelConfig, from_hf_config, to_hf_config
from xmodel2.model.mup import init_weights
from xmodel2.model.transformer import Transformer

WEIGHTS_NAME = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")


def build_model(config: ModelConfig, seed: int = 0, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> Transformer:
    """A freshly μP-initialised model; `device="meta"` builds it without memory (for counting)."""
    with torch.device(device):
        model = Transformer(config)
    if str(device) != "meta":
        init_weights(model, config, torch.Generator().manual_seed(seed))
        model.to(dtype)
    return model


def model_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Llama-named tensors, contiguous, with tied weights stored once (as the embedding)."""
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    return state


def save_model_folder(model: Transformer, out_dir: str | Path, tokenizer_dir: str | Path | None = None,
                      generation: dict | None = None, config_extra: dict | None = None) -> Path:
    """Write a complete model folder atomically (a crash leaves the old folder intact)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    config = model.config
    with atomic_directory(out_dir, kind="model") as tmp:
        hf = to_hf_config(config)
        if config_extra:
            hf.update(config_extra)
        hf["torch_dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
        atomic_write_json(tmp / "config.json", hf)
        save_file(model_state_dict(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        gen = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
               "pad_token_id": config.pad_token_id, "do_sample": False}
        gen.update(generation or {})
        atomic_write_json(tmp / "generation_config.json", gen)
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, tmp)
    return out_dir


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    src = Path(src)
    if src.is_file():
        shutil.copy2(src, Path(dst) / ("tokenizer.json" if src.suffix == ".json" else "tokenizer.model"))
        return
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, Path(dst) / name)


def load_config(folder: str | Path) -> ModelConfig:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: model folder not found")
    return from_hf_config(read_json(folder / "config.json", "config.json"), str(folder / "config.json"))


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: corrupt or unreadable safetensors file ({str(exc).splitlines()[0]})") from None


def read_folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: one `model.safetensors` or the shards of an index file."""
    single = folder / WEIGHTS_NAME
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        tensors: dict[str, torch.Tensor] = {}
        for shard in shard_names(index):
            tensors.update(read_safetensors(folder / shard))
        return tensors
    raise UserError(f"{folder}: no {WEIGHTS_NAME} (or sharded index) in the model folder")


def shard_names(index: Path) -> list[str]:
    """The shard files a `model.safetensors.index.json` names, each a plain file in its folder."""
    data = read_json(index, "safetensors index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index}: expected a JSON object with a non-empty \"weight_map\" "
                        f"(tensor name -> shard file)")
    shards = set(weight_map.values())
    for shard in shards:
        # A shard name is a file beside the index, never a path that leads elsewhere.
        if not isinstance(shard, str) or Path(shard).name != shard or shard in (".", ".."):
            raise UserError(f"{index}: weight_map names {shard!r}, not a file name in the folder")
    return sorted(shards)


def canonical_tensors(tensors: dict[str, torch.Tensor], config: ModelConfig,
                      source: str) -> dict[str, torch.Tensor]:
    """Check names, shapes and dtypes against the config; drop RoPE buffers and a tied LM head."""
    with torch.device("meta"):
        expected = Transformer(config).state_dict()
    tensors = {name: t for name, t in tensors.items() if not name.endswith("rotary_emb.inv_freq")}
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # writers often store the tied copy too
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    if missing:
        raise UserError(f"{source}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    if unexpected:
        raise UserError(f"{source}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected)")
    for name, meta in expected.items():
        if tuple(tensors[name].shape) != tuple(meta.shape):
            raise UserError(f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                            f"config says {tuple(meta.shape)}")
        if not tensors[name].is_floating_point():
            raise UserError(f"{source}: tensor {name!r} is {tensors[name].dtype}, expected floats")
    return {name: tensors[name] for name in expected}


def load_state_into(model: Transformer, tensors: dict[str, torch.Tensor], source: str) -> None:
    tensors = canonical_tensors(tensors, model.config, source)
    with torch.no_grad():
        for name, target in model.state_dict().items():
            target.copy_(tensors[name].to(target.dtype))


def load_model_folder(folder: str | Path, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> Transformer:
    folder = Path(folder)
    config = load_config(folder)
    tensors = read_folder_weights(folder)
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device=device)
    model.to(dtype)
    # Buffers (RoPE frequencies) are not stored: recompute them after to_empty.
    model.model.rotary.__init__(config.head_dim, config.rope_theta)
    model.model.rotary.to(device)
    load_state_into(model, tensors, str(folder))
    model.eval()
    return model
