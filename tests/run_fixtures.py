"""Helpers shared by the pretraining and distributed tests: corpus slices, run folders that start
from prepared tokenizer and shards, and the `xmodel2 pretrain` call they all make."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from xmodel2.cli import main
from xmodel2.data.corpus import corpus_file


def slice_jsonl(part: str, out: Path, limit: int) -> Path:
    """The first `limit` documents of a bundled corpus part, written as a user's JSONL file."""
    with gzip.open(corpus_file(part), "rt", encoding="utf-8") as handle:
        out.write_text("".join(line for _, line in zip(range(limit), handle)), encoding="utf-8")
    return out


def fresh_out(config_path: Path, tmp_path: Path, name: str, like: Path | None = None) -> Path:
    """A run folder: a copy of `like`, or one holding only the prepared tokenizer and shards of
    the `warm` run beside the config (no checkpoints)."""
    out = tmp_path / name
    if like is not None:
        shutil.copytree(like, out)
        return out
    warm = config_path.parent / "warm"
    out.mkdir()
    shutil.copytree(warm / "tokenizer", out / "tokenizer")
    shutil.copytree(warm / "data", out / "data")
    return out


def pretrain(config: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", str(config), "--out", str(out), "--no-progress", "--no-finish", *extra])
