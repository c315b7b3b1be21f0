"""Writes that never leave a half-written file or folder behind: write to a temp name, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, kind: str, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` in one rename.

    `kind` (a FOLDER_KINDS key) is recorded in the folder's mark; an existing `path` is replaced
    only when it is empty or holds the same kind. Every file is fsync-ed before the rename and
    the parent folder after it, so after a power loss the folder is either the old one or the
    complete new one. A crash inside the block leaves `path` as it was (plus a `.tmp` folder
    that the next attempt removes), so readers only ever see complete folders.
    """
    path = Path(path)
    _restore_interrupted_publish(path)
    check_replaceable(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_mark(tmp, kind)
    try:
        yield tmp
        for item in [tmp, *tmp.rglob("*")]:  # files copied or made by mkstemp may be 0600
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~_umask())
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists() and not overwrite:
        shutil.rmtree(tmp)
        raise FileExistsError(path)
    publish_directory(tmp, path)


def publish_directory(tmp: Path, path: Path) -> None:
    """Rename a complete, fsync-ed folder onto `path` (moving an old one aside first) and make
    the rename itself durable."""
    if path.exists():
        old = path.parent / f".{path.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        fsync_directory(path.parent)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
        fsync_directory(path.parent)


def _restore_interrupted_publish(path: Path) -> None:
    """A crash between `publish_directory`'s two renames leaves the old folder at `.NAME.old` and
    nothing at NAME: put the old one back before anything decides what NAME holds."""
    old = path.parent / f".{path.name}.old"
    if old.is_dir() and not path.exists():
        os.replace(old, path)
        fsync_directory(path.parent)


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder entry under `folder` to the disk (data first, then names)."""
    for item in folder.rglob("*"):
        if item.is_file() and not item.is_symlink():
            fd = os.open(item, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for item in [*folder.rglob("*"), folder]:
        if item.is_dir() and not item.is_symlink():
            fsync_directory(item)


def fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- folder kinds ----------------------------------------------------------------------------------

OWNER_MARK = ".xmodel2"  # in every folder xmodel2 writes: {"kind": ..., "version": 1}
MARK_VERSION = 1
# kind -> (one such folder, several of them), as messages name them
FOLDER_KINDS = {
    "model": ("a model folder", "model folders"),
    "checkpoint": ("a training checkpoint", "training checkpoints"),
    "run": ("a training run folder", "training run folders"),
    "shards": ("a token shard folder", "token shard folders"),
    "tokenizer": ("a tokenizer folder", "tokenizer folders"),
    "sft": ("an SFT data folder", "SFT data folders"),
}
UNKNOWN = "unknown"  # marked by an xmodel2 from before marks named a kind, content not recognised
FOREIGN = "foreign"  # not empty and not written by xmodel2
NOT_A_FOLDER = "file"
LOCK_FILE = ".lock"  # a run folder's lock (folders.py); alone, it does not make a folder non-empty


def write_mark(folder: Path, kind: str) -> None:
    if kind not in FOLDER_KINDS:
        raise ValueError(f"unknown folder kind {kind!r}")
    atomic_write_text(folder / OWNER_MARK, json.dumps({"kind": kind, "version": MARK_VERSION}) + "\n")


def folder_kind(path: str | os.PathLike) -> str | None:
    """What `path` holds: a FOLDER_KINDS key, UNKNOWN, FOREIGN, NOT_A_FOLDER, or None when it is
    absent or empty (anything may be written there)."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_dir():
        return NOT_A_FOLDER
    names = {p.name for p in path.iterdir()} - {LOCK_FILE}
    if not names:
        return None
    mark = path / OWNER_MARK
    if not mark.is_file():
        return "run" if _legacy_run(names) else FOREIGN
    try:
        kind = json.loads(mark.read_text(encoding="utf-8")).get("kind")
    except (ValueError, AttributeError):  # the plain-text mark written before kinds existed
        kind = None
    return kind if kind in FOLDER_KINDS else _legacy_kind(names)


RUN_SUBFOLDERS = {"tokenizer", "data", "checkpoints"}  # each entry of them is kind-checked when written


def _legacy_run(names: set[str]) -> bool:
    """Run folders were not marked before kinds existed: a run's config beside its checkpoints
    identifies one, and so does a folder holding nothing but a run's subfolders (prepared ahead
    of the run), where a run overwrites nothing that is not its own."""
    return ("run_config.json" in names and "checkpoints" in names) or names <= RUN_SUBFOLDERS


def _legacy_kind(names: set[str]) -> str:
    """The kind of a folder marked before marks named one, from the files it holds."""
    if names & {"trainer_state.json", "optimizer.pt", "optimizer"}:
        return "checkpoint"
    if "model.safetensors" in names or "model.safetensors.index.json" in names:
        return "model"
    if "meta.json" in names and "tokens.bin" in names:
        return "shards"
    if "sft-report.json" in names:
        return "sft"
    if "tokenizer.model" in names and "config.json" not in names:
        return "tokenizer"
    return UNKNOWN


def check_replaceable(path: str | os.PathLike, kind: str, command: str | None = None) -> None:
    """Refuse, in one line naming the path and both kinds, to write `kind` over anything but an
    absent or empty folder or one of the same kind: `--out ~/` must never wipe a home, and an
    import must never replace a training checkpoint with a bare model folder."""
    found = folder_kind(path)
    if found is None or found == kind:
        return
    from xmodel2.errors import UserError

    one, several = FOLDER_KINDS[kind]
    writer = f"{command} writes {one}" if command else f"this writes {one}"
    raise UserError(f"{path}: {describe_kind(found)}; {writer} and replaces only {several} "
                    "(choose another output folder or remove it)")


def describe_kind(found: str) -> str:
    """What a folder_kind() result means, as the middle of a message about the path."""
    if found in FOLDER_KINDS:
        return f"holds {FOLDER_KINDS[found][0]}"
    return {NOT_A_FOLDER: "is a file, not a folder",
            FOREIGN: "exists and was not written by xmodel2",
            UNKNOWN: "was written by an earlier xmodel2 and its kind is not recognised"}[found]


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    from xmodel2.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None


def iter_jsonl_objects(path: str | os.PathLike, what: str = "JSONL file") -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL(.gz) file; a line that is not a
    JSON object is a one-line error naming FILE:LINE."""
    import gzip
    import zlib

    from xmodel2.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{number}: invalid JSON: {exc.msg}") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}:{number}: expected a JSON object")
                yield number, row
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        # A cut download: the lines before it were read, the rest is missing.
        raise UserError(f"{path}: damaged or truncated gzip file after line {number} ({exc})") from None


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
