"""Read Hugging Face-style checkpoints (Llama, MiniCPM, Xmodel-2, Xmodel-2.5, GGUF) and write folders.

Every source becomes a `Checkpoint`: our `ModelConfig` plus Llama-named tensors in their stored
dtype (a tied LM head is dropped). Writing never converts dtypes, so import then export is
bit-exact. Weights are read through safetensors only; GGUF goes through transformers, which
dequantizes it.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from xmodel2.errors import UserError
from xmodel2.fileio import atomic_directory, atomic_write_json, read_json
from xmodel2.model.config import ModelConfig, from_hf_config, to_hf_config
from xmodel2.model.folder import WEIGHTS_NAME, canonical_tensors, copy_tokenizer_files, read_folder_weights

# config.json files without "architectures" (or GGUF metadata) only name a model_type.
ARCHITECTURE_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "minicpm": "MiniCPMForCausalLM",
    "xmodel": "XmodelForCausalLM",
    "xmodel2": "Xmodel2ForCausalLM",
}
TOKENIZER_MODEL_FILES = ("tokenizer.model", "tokenizer.json")


@dataclass
class Checkpoint:
    config: ModelConfig
    tensors: dict[str, torch.Tensor]
    tokenizer_dir: Path | None  # where the tokenizer files are, if any


def read_checkpoint(src: str | Path, workdir: str | Path) -> Checkpoint:
    """A model folder or a `.gguf` file; `workdir` holds files extracted from a GGUF."""
    src = Path(src)
    if src.suffix == ".gguf":
        return read_gguf(src, Path(workdir))
    if not src.exists():
        raise UserError(f"{src}: model folder not found")
    if not src.is_dir():
        raise UserError(f"{src}: expected a model folder (config.json + safetensors) or a .gguf file")
    hf = read_json(src / "config.json", "config.json")
    if not isinstance(hf, dict):
        raise UserError(f"{src / 'config.json'}: expected a JSON object")
    config = from_hf_config(with_architecture(hf), str(src / "config.json"))
    tensors = canonical_tensors(read_folder_weights(src), config, str(src))
    return Checkpoint(config, tensors, src)


def read_gguf(path: Path, workdir: Path) -> Checkpoint:
    if not path.is_file():
        raise UserError(f"{path}: GGUF file not found")
    try:
        import accelerate  # noqa: F401  (transformers needs it for GGUF)
        import gguf  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise UserError(f"{path}: reading GGUF needs `pip install transformers gguf accelerate` "
                        f"({exc.name} is missing)") from None
    check_gguf_header(path)
    isolated = isolated_gguf(path, workdir)
    try:
        # Only the GGUF's own metadata is read: the folder holds nothing else, and remote code
        # is refused outright (never asked about on the terminal).
        model = AutoModelForCausalLM.from_pretrained(isolated.parent, gguf_file=isolated.name,
                                                     dtype=torch.float32, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(isolated.parent, gguf_file=isolated.name,
                                                  trust_remote_code=False)
    except (struct.error, EOFError) as exc:
        raise UserError(f"{path}: GGUF file is cut short, it ends inside its header or tensor "
                        f"data ({_first_line(exc)})") from None
    except GGUF_READ_ERRORS as exc:
        raise UserError(f"{path}: cannot read GGUF ({_first_line(exc)})") from None
    hf = model.config.to_dict()
    hf["architectures"] = [type(model).__name__]
    config = from_hf_config(hf, str(path))
    tensors = canonical_tensors(model.state_dict(), config, str(path))
    tokenizer_dir = workdir / "tokenizer"
    tokenizer.save_pretrained(str(tokenizer_dir))
    return Checkpoint(config, tensors, tokenizer_dir)


GGUF_MAGIC = b"GGUF"
# What transformers and the gguf reader raise on a damaged or unsupported file.
GGUF_READ_ERRORS = (ValueError, OSError, KeyError, IndexError, RuntimeError, NotImplementedError)


def check_gguf_header(path: Path) -> None:
    """A file that is not GGUF at all gets a plain answer before transformers is involved."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if magic != GGUF_MAGIC:
        raise UserError(f"{path}: not a GGUF file (it does not start with {GGUF_MAGIC!r})")


def isolated_gguf(path: Path, workdir: Path) -> Path:
    """The GGUF alone in a private folder of `workdir`, as a link (no copy of gigabytes).

    transformers reads `tokenizer_config.json`, `config.json` and their `auto_map` (custom code)
    from the folder it is given; the folder beside a downloaded GGUF is not ours to trust.
    """
    folder = Path(tempfile.mkdtemp(prefix="gguf-", dir=workdir))  # mode 0700
    link = folder / path.name
    try:
        os.link(path, link)
    except OSError:  # another file system, or hard links to others' files not allowed
        link.symlink_to(path.resolve())
    return link


def with_architecture(hf: dict) -> dict:
    if hf.get("architectures"):
        return hf
    model_type = hf.get("model_type")
    return {**hf, "architectures": [ARCHITECTURE_BY_MODEL_TYPE.get(model_type, str(model_type))]}


def write_folder(out: str | Path, hf_config: dict, tensors: dict[str, torch.Tensor],
                 generation: dict, tokenizer_dir: Path | None) -> Path:
    """config.json + model.safetensors + generation_config.json + tokenizer files, atomically."""
    from safetensors.torch import save_file

    out = Path(out)
    with atomic_directory(out, kind="model") as tmp:
        hf_config = dict(hf_config)
        hf_config["torch_dtype"] = str(tensors["model.embed_tokens.weight"].dtype).replace("torch.", "")
        atomic_write_json(tmp / "config.json", hf_config)
        save_file({name: t.contiguous() for name, t in tensors.items()}, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt"})
        atomic_write_json(tmp / "generation_config.json", generation)
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, tmp)
            check_tokenizer_files(tmp, shown_as=Path(tokenizer_dir))
    return out


def write_native_folder(out: str | Path, checkpoint: Checkpoint) -> Path:
    config = checkpoint.config
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
                  "pad_token_id": config.pad_token_id, "do_sample": False}
    return write_folder(out, to_hf_config(config), checkpoint.tensors, generation,
                        checkpoint.tokenizer_dir)


def check_tokenizer_files(folder: Path, shown_as: Path) -> None:
    """Each tokenizer model file must load as what its name says (SentencePiece or tokenizer.json).

    Errors name the file under `shown_as` (where the user's copy is), not the temporary folder.
    """
    from xmodel2.tokenizer.load import Tokenizer

    for name in TOKENIZER_MODEL_FILES:
        if (folder / name).is_file():
            try:
                Tokenizer(folder / name)
            except UserError as exc:
                # name the source file, not the temporary copy
                raise UserError(str(exc).replace(str(folder / name), str(shown_as / name))) from None
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{shown_as / config.name}: invalid JSON ({exc})") from None


def import_model(src: str | Path, out: str | Path) -> Checkpoint:
    with tempfile.TemporaryDirectory() as work:
        checkpoint = read_checkpoint(src, work)
        write_native_folder(out, checkpoint)
    return checkpoint


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
