"""Where the bundled corpus lives (data/corpus/ in a source checkout); see data/SOURCES.md."""

from __future__ import annotations

from pathlib import Path

from xmodel2.errors import UserError

CORPUS_DIR = Path(__file__).resolve().parents[3] / "data" / "corpus"
# training parts; wiki-validation and wiki-test are held out for evaluation
TRAIN_PARTS = ("wiki-train", "shakespeare", "python-docs", "python-code", "math")
HELD_OUT_PARTS = ("wiki-validation", "wiki-test")


def corpus_file(part: str) -> Path:
    """Path of one part of the bundled corpus, e.g. corpus_file("wiki-train")."""
    path = CORPUS_DIR / f"{part}.jsonl.gz"
    if not path.is_file():
        known = ", ".join(TRAIN_PARTS + HELD_OUT_PARTS)
        raise UserError(f"{path}: bundled corpus part {part!r} not found (parts: {known})")
    return path
