"""Where a command may write: outputs apart from its inputs, and one run at a time per run folder.

Folder kinds and the replace rule live in `fileio` (atomic_directory enforces them); this module
adds what a command checks before it starts work:

- `check_outputs_apart`: no output is an input, contains one, or lies inside one (paths are
  resolved, so symlinks and `..` do not hide a match, and hard links to one file are caught);
- `claim_run_folder`: `pretrain --out` takes only a new or empty folder or a run folder, marks it
  as a run and holds an exclusive lock on it for the life of the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Iterable, Iterator

from xmodel2.errors import UserError
from xmodel2.fileio import LOCK_FILE, describe_kind, folder_kind, write_mark


def check_outputs_apart(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike],
                        role: str = "the output") -> None:
    """One-line error when an output path is an input, contains one, or lies inside one; `role`
    names the output in the message (say, a report derived from --out)."""
    inputs = [Path(p) for p in inputs]
    for output in map(Path, outputs):
        for source in inputs:
            relation = _overlap(output, source)
            if relation:
                raise UserError(f"{output}: {role} would {relation} {source}; choose an output path "
                                "apart from the inputs")


def _overlap(output: Path, source: Path) -> str | None:
    out, src = output.resolve(), source.resolve()
    if out == src or (out.exists() and src.exists() and os.path.samefile(out, src)):
        return "overwrite the input"
    if src in out.parents:
        return "lie inside the input"
    if out in src.parents:
        return "contain the input"
    return None


@contextlib.contextmanager
def claim_run_folder(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Check, mark and lock a run folder for as long as the block runs.

    A second run on the same folder is refused at once, naming the process that holds it. The
    lock is an `flock`, which the kernel drops when its holder dies, so the lock file a killed
    run leaves behind does not block the resume.
    """
    out_dir = Path(out_dir)
    found = folder_kind(out_dir)
    if found not in (None, "run"):
        raise UserError(f"{out_dir}: {describe_kind(found)}; pretrain uses only a new or empty folder "
                        "or a run folder it wrote (choose another --out)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(out_dir):
        write_mark(out_dir, "run")
        yield out_dir


@contextlib.contextmanager
def _exclusive_lock(out_dir: Path) -> Iterator[None]:
    fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out_dir}: another run is using this folder ({_holder(fd)}); wait for it "
                            "to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode() + b"\n")
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, naming the last holder


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"pid {int(holder['pid'])} on {holder['host']}"
    except (ValueError, KeyError, TypeError):  # the holder has not written its name yet
        return "pid unknown"
