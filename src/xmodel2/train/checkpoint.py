"""Training checkpoints: a complete model folder plus the state needed to resume exactly.

`OUT/checkpoints/step-NNNNNNNN/` holds the model folder (config.json, model.safetensors, tokenizer,
generation_config.json) and beside it `trainer_state.json` (step, tokens, resolved run config),
`optimizer.pt` and `rng.pt`, both read back with `torch.load(weights_only=True)`, so a checkpoint
handed to us cannot execute code. Each folder is written under a temporary name and renamed when
complete, so a crash mid-write leaves the previous checkpoint the newest complete one.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xmodel2.errors import UserError
from xmodel2.fileio import OWNER_MARK, atomic_directory, atomic_write_json, read_json
from xmodel2.model.folder import load_state_into, read_safetensors, save_model_folder, WEIGHTS_NAME
from xmodel2.model.transformer import Transformer

STEP_DIR = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.json"


@dataclass
class TrainingState:
    step: int  # steps completed
    tokens: int  # training tokens consumed
    run_config: dict[str, Any]
    extra: dict[str, Any]


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step:08d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def save_checkpoint(out_dir: str | Path, model: Transformer, optimizer: torch.optim.Optimizer,
                    state: TrainingState, tokenizer_dir: str | Path | None, keep: int = 0) -> Path:
    path = checkpoint_dir(out_dir, state.step)
    with atomic_directory(path, kind="checkpoint") as tmp:
        # The model folder goes into a subfolder of the temporary folder first, then its files are
        # moved up; save_model_folder is itself atomic, which we do not need twice here.
        save_model_folder(model, tmp / "model", tokenizer_dir=tokenizer_dir)
        move_model_files_up(tmp / "model")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        atomic_write_json(tmp / STATE_FILE, {"step": state.step, "tokens": state.tokens,
                                              "run_config": state.run_config, **state.extra})
    if keep > 0:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def move_model_files_up(model_dir: Path) -> None:
    """Move a model folder's files into its parent (the checkpoint) and remove it; its mark,
    which says "model", stays behind so the parent keeps its own "checkpoint" mark."""
    for item in model_dir.iterdir():
        if item.name == OWNER_MARK:
            item.unlink()
        else:
            item.rename(model_dir.parent / item.name)
    model_dir.rmdir()


def load_checkpoint(path: str | Path, model: Transformer,
                    optimizer: torch.optim.Optimizer | None) -> TrainingState:
    """Restore weights (and optimizer and RNG when given) in place; return the saved state."""
    path = Path(path)
    meta = read_json(path / STATE_FILE, "trainer state")
    load_state_into(model, read_safetensors(path / WEIGHTS_NAME), str(path))
    if optimizer is not None:
        optimizer_file = path / "optimizer.pt"
        if not optimizer_file.is_file():
            raise UserError(f"{optimizer_file}: optimizer state not found")
        try:
            optimizer_state = torch.load(optimizer_file, map_location="cpu", weights_only=True)
            optimizer.load_state_dict(optimizer_state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"{optimizer_file}: cannot restore optimizer state ({exc})") from None
        rng = torch.load(path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
    extra = {k: v for k, v in meta.items() if k not in ("step", "tokens", "run_config")}
    return TrainingState(step=int(meta["step"]), tokens=int(meta["tokens"]),
                         run_config=meta.get("run_config", {}), extra=extra)
