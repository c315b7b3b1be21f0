"""Documents from text files, JSONL files and folders of them, with counts of what was skipped.

A plain text file is one document; a `.jsonl` (optionally `.gz`) file holds one JSON object per
line and the document is one of its fields. Lines that are not valid UTF-8, lines that are not
JSON objects with a string in that field, and empty documents are skipped and counted, or with
`strict=True` raise a UserError naming FILE:LINE.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from xmodel2.errors import UserError


@dataclass
class FileCounts:
    """What one input file gave: kept documents and each kind of skipped line."""

    path: str
    documents: int = 0
    tokens: int = 0
    malformed_lines: int = 0
    invalid_utf8: int = 0
    empty_documents: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def skipped(self) -> int:
        return self.malformed_lines + self.invalid_utf8 + self.empty_documents


def is_jsonl(path: Path) -> bool:
    suffixes = path.suffixes[:-1] if path.suffix == ".gz" else path.suffixes
    return bool(suffixes) and suffixes[-1] == ".jsonl"


def input_files(inputs: list[str]) -> list[Path]:
    """The files named, folders expanded to their non-hidden files in sorted order."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(
                p for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)))
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: input file or folder not found")
    return files


def raw_lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            yield from handle
    except (OSError, EOFError, zlib.error) as exc:  # unreadable, or a corrupt / truncated .gz
        raise UserError(f"{path}: cannot read ({exc})") from None


class DocumentReader:
    """Iterates the documents of one file and fills `counts` as it goes."""

    def __init__(self, path: Path, jsonl_field: str = "text", strict: bool = False):
        self.path = path
        self.jsonl_field = jsonl_field
        self.strict = strict
        self.counts = FileCounts(str(path))

    def __iter__(self) -> Iterator[str]:
        docs = self._jsonl() if is_jsonl(self.path) else self._text()
        for text in docs:
            self.counts.documents += 1
            yield text

    def _skip(self, kind: str, line: int, message: str) -> None:
        if self.strict:
            raise UserError(f"{self.path}:{line}: {message}")
        setattr(self.counts, kind, getattr(self.counts, kind) + 1)

    def _text(self) -> Iterator[str]:
        data = b"".join(raw_lines(self.path))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            self._skip("invalid_utf8", line, f"invalid UTF-8 ({exc.reason} at byte {exc.start})")
            return
        if not text.strip():
            self._skip("empty_documents", 1, "empty document")
            return
        yield text

    def _jsonl(self) -> Iterator[str]:
        field = self.jsonl_field
        for number, raw in enumerate(raw_lines(self.path), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self._skip("invalid_utf8", number, f"invalid UTF-8 ({exc.reason} at column {exc.start + 1})")
                continue
            if not line.strip():
                self._skip("empty_documents", number, "blank line")
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                self._skip("malformed_lines", number, f"invalid JSON: {exc.msg}")
                continue
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                self._skip("malformed_lines", number, f"no string field {field!r} (see --jsonl-field)")
                continue
            text = record[field]
            try:  # JSON escapes can smuggle in lone surrogates, which are not encodable text
                text.encode("utf-8")
            except UnicodeEncodeError:
                self._skip("invalid_utf8", number, f"{field!r} holds an unpaired surrogate escape")
                continue
            if not text.strip():
                self._skip("empty_documents", number, f"empty {field!r}")
                continue
            yield text
