"""Training sentences from documents: by default those of text files, JSONL files and folders of
them (each optionally gzipped); `xmodel2.data.readers.read_documents` adds Parquet, zstd and
Hugging Face dataset folders, and the commands and the engine pass it in."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Iterable, Iterator

from xmodel2.errors import UserError

# SentencePiece drops sentences longer than this many bytes; we cut long lines instead.
MAX_SENTENCE_BYTES = 4192
_CHUNK_CHARS = MAX_SENTENCE_BYTES // 4  # a UTF-8 character is at most 4 bytes


def input_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The files named, with folders expanded to their non-hidden files in sorted order."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()
                                and not any(part.startswith(".") for part in p.relative_to(path).parts)))
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: input file or folder not found")
    return files


def _is_jsonl(path: Path) -> bool:
    suffixes = path.suffixes[:-1] if path.suffix == ".gz" else path.suffixes
    return bool(suffixes) and suffixes[-1] == ".jsonl"


def _lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="\n") as handle:
            yield from handle
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError) as exc:  # a corrupt or truncated .gz
        raise UserError(f"{path}: cannot read ({exc})") from None


def documents(path: Path, jsonl_field: str = "text") -> Iterator[str]:
    """A text file is one document; a JSONL file gives one document per record."""
    if not _is_jsonl(path):
        yield "".join(_lines(path))
        return
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: invalid JSON: {exc.msg}") from None
        if not isinstance(record, dict) or jsonl_field not in record:
            raise UserError(f"{path}:{number}: no field {jsonl_field!r} (set --jsonl-field)")
        text = record[jsonl_field]
        if not isinstance(text, str):
            raise UserError(f"{path}:{number}: field {jsonl_field!r} is not a string")
        yield text


def sentences(files: Iterable[Path], jsonl_field: str = "text") -> Iterator[str]:
    """Non-blank lines of the files' documents, cut to SentencePiece's length limit."""
    return document_sentences(doc for path in files for doc in documents(path, jsonl_field))


def plain_documents(inputs: Iterable[str | Path], jsonl_field: str = "text") -> Iterator[str]:
    """The documents of text and JSONL files (and folders of them), each optionally gzipped."""
    for path in input_files(inputs):
        yield from documents(path, jsonl_field)


def document_sentences(docs: Iterable[str]) -> Iterator[str]:
    """Non-blank lines, cut to SentencePiece's length limit; indentation is kept (it is tokenized)."""
    for doc in docs:
        for line in doc.split("\n"):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            for start in range(0, len(line), _CHUNK_CHARS):
                yield line[start:start + _CHUNK_CHARS]


def sample(stream: Iterable[str], limit: int | None, seed: int) -> list[str]:
    """At most `limit` sentences, a uniform seeded sample (reservoir) when there are more."""
    if limit is None:
        return list(stream)
    rng = random.Random(seed)
    kept: list[str] = []
    for seen, sentence in enumerate(stream):
        if seen < limit:
            kept.append(sentence)
        else:
            slot = rng.randrange(seen + 1)
            if slot < limit:
                kept[slot] = sentence
    return kept
