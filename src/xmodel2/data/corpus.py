"""Where the bundled data lives: `xmodel2/bundled/` inside the package (the corpus, evaluation
samples and the default SFT set; sources and licences in its SOURCES.md), so that an installed
wheel carries it as well as a source checkout."""

from __future__ import annotations

from pathlib import Path

from xmodel2.errors import UserError

BUNDLED_ROOT = Path(__file__).resolve().parents[1] / "bundled"
CORPUS_DIR = BUNDLED_ROOT / "corpus"
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
