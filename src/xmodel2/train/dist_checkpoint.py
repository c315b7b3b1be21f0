"""Checkpoints written by many ranks, readable by any number of ranks (including one).

A distributed checkpoint is the same folder as a single-process one (checkpoint.py): a complete
model folder (rank 0 gathers the full weights into `model.safetensors`, so `xmodel2 generate`
loads it), `trainer_state.json` and `rng.pt`, except that the optimizer's tensors are written by
every rank at once with `torch.distributed.checkpoint` (DCP) into `optimizer/`, each rank its
own shard. DCP records which slice of which tensor each file holds, so a later run on another
number of ranks (or a plain single process) reads back exactly the slices it owns.

The data position, learning rate and batch are pure functions of the step, so with the same
global batch a resumed run continues the same run whatever its world size. Optimizer
hyperparameters come from the resumed run's config; only the state tensors are restored.

Safety: DCP's metadata file is a pickle. It is read here with an unpickler that admits only
DCP's own metadata classes and torch's tensor attributes, and only tensors are stored (no
pickled objects), so reading a checkpoint cannot run code.
"""

from __future__ import annotations

import pickle
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import torch
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, StorageMeta
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)

from xmodel2.errors import UserError
from xmodel2.fileio import atomic_write_json, fsync_tree, publish_directory, read_json, write_mark
from xmodel2.model.folder import WEIGHTS_NAME, save_model_folder
from xmodel2.model.transformer import Transformer
from xmodel2.train import distributed
from xmodel2.train.checkpoint import (STATE_FILE, TrainingState, checkpoint_dir, list_checkpoints,
                                      move_model_files_up)

OPTIMIZER_DIR = "optimizer"  # DCP folder: the optimizer's state tensors, sharded
OPTIMIZER_FILE = "optimizer.pt"  # single-process checkpoints: one full state dict


# ---- writing -------------------------------------------------------------------------------------

def save_sharded_checkpoint(out_dir: str | Path, model: Transformer, optimizer: torch.optim.Optimizer,
                            state: TrainingState, tokenizer_dir: str | Path | None, keep: int = 0) -> Path:
    """Write OUT/checkpoints/step-N from every rank; call it on all ranks at the same step.

    Everything goes into a temporary folder that rank 0 renames once all ranks have finished,
    so a crash on any rank leaves the previous checkpoint the newest complete one.
    """
    path = checkpoint_dir(out_dir, state.step)
    tmp = path.parent / f".{path.name}.tmp"
    main = distributed.is_main_process()
    # A collective: rank 0 receives the full (unsharded) weights on CPU, the others nothing.
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    distributed.barrier()
    optimizer_state = get_optimizer_state_dict(model, optimizer)["state"]
    # Collective too: it returns once every rank's shard and rank 0's metadata are written.
    torch.distributed.checkpoint.save({"state": optimizer_state},
                                      storage_writer=FileSystemWriter(tmp / OPTIMIZER_DIR))
    if main:
        _write_model_folder(model, weights, tmp, tokenizer_dir)
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        atomic_write_json(tmp / STATE_FILE, {"step": state.step, "tokens": state.tokens,
                                              "run_config": state.run_config, **state.extra})
        _publish(tmp, path)
        if keep > 0:
            for old in list_checkpoints(out_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return path


def _write_model_folder(model: Transformer, weights: dict[str, torch.Tensor], folder: Path,
                        tokenizer_dir: str | Path | None) -> None:
    # A parameter-free copy of the model takes the gathered tensors without copying them.
    with torch.device("meta"):
        full = Transformer(model.config)
    full.load_state_dict(weights, assign=True)
    save_model_folder(full, folder / "model", tokenizer_dir=tokenizer_dir)
    move_model_files_up(folder / "model")
    write_mark(folder, "checkpoint")


def _publish(tmp: Path, path: Path) -> None:
    for item in [tmp, *tmp.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    fsync_tree(tmp)  # every rank's shard is on the shared disk before the folder counts as complete
    publish_directory(tmp, path)  # replaces one re-written after a resume from an earlier step


# ---- reading -------------------------------------------------------------------------------------

def restore_optimizer(path: str | Path, model: Transformer, optimizer: torch.optim.Optimizer) -> None:
    """Load a checkpoint's optimizer state (sharded or single-file) and RNG into this run.

    Call it after `parallelize` and after building the optimizer, on every rank.
    """
    path = Path(path)
    if (path / OPTIMIZER_DIR / ".metadata").is_file():
        _load_sharded_optimizer(path / OPTIMIZER_DIR, model, optimizer)
    elif (path / OPTIMIZER_FILE).is_file():
        full = _torch_load(path / OPTIMIZER_FILE)
        try:
            if distributed.is_distributed():
                set_optimizer_state_dict(model, optimizer, _by_name(full),
                                         options=StateDictOptions(full_state_dict=True))
            else:
                optimizer.load_state_dict(full)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"{path / OPTIMIZER_FILE}: cannot restore optimizer state ({exc})") from None
    else:
        raise UserError(f"{path}: no optimizer state ({OPTIMIZER_DIR}/ or {OPTIMIZER_FILE})")
    if (path / "rng.pt").is_file():
        torch.set_rng_state(_torch_load(path / "rng.pt")["torch"])


def _torch_load(file: Path):
    if file.stat().st_size == 0:  # what a power loss before the data reached the disk leaves
        raise UserError(f"{file}: empty file")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{file}: unreadable ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    # An empty file raises EOFError with no message at all.
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ---- choosing the checkpoint to resume from ------------------------------------------------------

def newest_resumable_checkpoint(out_dir: str | Path, report: Callable[[str], None]) -> Path | None:
    """The newest checkpoint of a run folder that passes `resume_problem`, reporting each newer
    one skipped (say a power loss emptied its files) in one line; None when there is none at
    all, an error when there are some and none of them loads."""
    skipped: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(out_dir)):
        problem = resume_problem(path)
        if problem is None:
            for bad, why in skipped:
                report(f"skipping checkpoint {bad}: {why}; resuming from {path.name}")
            return path
        skipped.append((path, problem))
    if skipped:
        newest, why = skipped[0]
        raise UserError(f"{newest}: cannot resume from it ({why}) and no earlier checkpoint loads")
    return None


def resume_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, or None. Cheap: it reads headers, the trainer
    state and the optimizer's file index, and checks that every file is as long as they say."""
    return _weights_problem(path) or _state_problem(path) or _optimizer_problem(path)


def _weights_problem(path: Path) -> str | None:
    from safetensors import SafetensorError, safe_open

    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        return f"{WEIGHTS_NAME} is missing"
    try:
        with safe_open(str(weights), "pt"):  # checks the header and that the data covers it
            pass
    except (SafetensorError, OSError, ValueError) as exc:
        return f"{WEIGHTS_NAME} is unreadable ({_first_line(exc)})"
    return None


def _state_problem(path: Path) -> str | None:
    try:
        meta = read_json(path / STATE_FILE, "trainer state")
        int(meta["step"]), int(meta["tokens"])
    except UserError as exc:
        return str(exc).removeprefix(f"{path / STATE_FILE}: ")
    except (KeyError, TypeError, ValueError):
        return f"{STATE_FILE} lacks a valid step or token count"
    return None


def _optimizer_problem(path: Path) -> str | None:
    if (path / OPTIMIZER_DIR / ".metadata").is_file():
        return _sharded_optimizer_problem(path / OPTIMIZER_DIR)
    if (path / OPTIMIZER_FILE).is_file():
        return _zip_problem(path / OPTIMIZER_FILE)
    return f"no optimizer state ({OPTIMIZER_DIR}/ or {OPTIMIZER_FILE})"


def _zip_problem(file: Path) -> str | None:
    """torch.save writes a zip archive: its index sits at the end and names every record's place."""
    try:
        with zipfile.ZipFile(file) as archive:
            size = file.stat().st_size
            if any(info.header_offset + info.compress_size > size for info in archive.infolist()):
                return f"{file.name} is shorter than its index says"
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"{file.name} is unreadable ({_first_line(exc)})"
    return None


def _sharded_optimizer_problem(folder: Path) -> str | None:
    try:
        metadata = SafeFileSystemReader(folder).read_metadata()
    except UserError as exc:
        return str(exc)
    for info in (metadata.storage_data or {}).values():
        shard = folder / info.relative_path
        if not shard.is_file() or shard.stat().st_size < info.offset + info.length:
            return f"{OPTIMIZER_DIR}/{info.relative_path} is missing or shorter than its index says"
    return None


def _by_name(full: dict) -> dict:
    """A torch optimizer state dict (keyed by parameter index) keyed by parameter name instead;
    our parameter groups carry the names (`param_names`, see model/mup.py)."""
    state, groups = {}, []
    for group in full["param_groups"]:
        names = group.get("param_names")
        if names is None or len(names) != len(group["params"]):
            raise UserError("optimizer state without parameter names: written by another program")
        for index, name in zip(group["params"], names):
            if index in full["state"]:
                state[name] = full["state"][index]
        groups.append({**group, "params": list(names)})
    return {"state": state, "param_groups": groups}


def _load_sharded_optimizer(folder: Path, model: Transformer, optimizer: torch.optim.Optimizer) -> None:
    # The template says which tensors, and which slices of them, this rank holds now.
    template = get_optimizer_state_dict(model, optimizer)
    reader = SafeFileSystemReader(folder)
    reader.read_metadata()  # refuse a bad file here, in one line, before DCP wraps the error
    try:
        with warnings.catch_warnings():  # one process reading all shards is intended here
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            torch.distributed.checkpoint.load({"state": template["state"]}, storage_reader=reader,
                                              no_dist=not distributed.is_distributed())
    except CheckpointException as exc:
        error, _ = next(iter(exc.failures.values()))
        raise UserError(f"{folder}: cannot restore optimizer state ({str(error).splitlines()[0]})") from None
    set_optimizer_state_dict(model, optimizer, template)


class SafeFileSystemReader(FileSystemReader):
    """DCP's reader with a restricted unpickler for the metadata file (see the module docstring)."""

    def read_metadata(self, *args, **kwargs):
        file = Path(self.path) / ".metadata"
        try:
            with open(file, "rb") as handle:
                metadata = _MetadataUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise UserError(f"{file}: not a checkpoint metadata file we accept ({exc})") from None
        if any(isinstance(m, BytesStorageMetadata) for m in metadata.state_dict_metadata.values()):
            raise UserError(f"{file}: holds pickled objects; only tensors are accepted")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


# Exactly what DCP's metadata pickles refer to (torch 2.x); anything else is refused.
_ALLOWED_GLOBALS = {
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "TensorProperties",
        "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # a layout by its name
    ("torch", "Size"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if not is_dtype and (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)
