"""Documents from the formats corpora ship in, with counts of what was skipped.

- Plain text (optionally `.gz` or `.zst`): the whole file is one document.
- JSON Lines: `.jsonl`, `.json` or `.ndjson`, plain, `.gz` or `.zst` (Dolma, DCLM): one JSON object a
  line, the document is one of its fields.
- Parquet (FineWeb-Edu, The Stack): the document is one string column, read a batch of rows at a
  time, so a file is never held in memory whole.
- Arrow stream files, as a Hugging Face dataset folder holds them (`save_to_disk` output: a folder
  with `state.json`, or a `DatasetDict` folder with `dataset_dict.json` and one folder a split).

A bad record (a line that is not UTF-8 or not a JSON object with a string in the field, a null
cell, an empty document) is skipped and counted, or with `strict=True` raises a UserError naming
FILE:LINE (text and JSON Lines) or FILE:row N (Parquet and Arrow, counted from 1).
"""

from __future__ import annotations

import glob
import gzip
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from xmodel2.errors import UserError

COMPRESSIONS = (".gz", ".zst", ".zstd")
JSON_LINES = (".jsonl", ".json", ".ndjson")
ROWS_PER_BATCH = 1024  # columnar files are read this many rows at a time
# a Hugging Face `save_to_disk` folder: one dataset, or a DatasetDict of split folders
HF_DATASET_STATE = "state.json"
HF_DATASET_DICT = "dataset_dict.json"
FIELD_HINT = "set --text-field, or a source's jsonl_field in a run config"


@dataclass
class FileCounts:
    """What one input file gave: kept documents and each kind of skipped record."""

    path: str
    documents: int = 0
    tokens: int = 0
    malformed_lines: int = 0  # lines or rows without a string in the text field
    invalid_utf8: int = 0
    empty_documents: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def skipped(self) -> int:
        return self.malformed_lines + self.invalid_utf8 + self.empty_documents


def _format_suffix(path: Path) -> str:
    """The suffix that says what the file holds, under any compression suffix."""
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return suffixes[-1].lower() if suffixes else ""


def is_jsonl(path: Path) -> bool:
    return _format_suffix(path) in JSON_LINES


def input_kind(path: Path) -> str:
    """text, jsonl, parquet or arrow."""
    suffix = _format_suffix(path)
    if suffix in JSON_LINES:
        return "jsonl"
    if suffix in (".parquet", ".arrow") and path.suffix in COMPRESSIONS:
        raise UserError(f"{path}: compressed {suffix} files are not supported (Parquet and Arrow "
                        "compress inside the file)")
    return {".parquet": "parquet", ".arrow": "arrow"}.get(suffix, "text")


def input_files(inputs: Iterable[str]) -> list[Path]:
    """The files named, in order: folders expanded to their non-hidden files in sorted order (a
    Hugging Face dataset folder to its Arrow files in the dataset's order), globs to their sorted
    matches."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(_folder_files(path))
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            if not matches:
                raise UserError(f"{item}: no files match this pattern")
            files.extend(input_files(map(str, matches)))
        else:
            raise UserError(f"{path}: input file or folder not found")
    return files


def _folder_files(folder: Path) -> list[Path]:
    if (folder / HF_DATASET_DICT).is_file():
        splits = _read_json_key(folder / HF_DATASET_DICT, "splits")
        return [file for split in splits for file in _folder_files(folder / str(split))]
    if (folder / HF_DATASET_STATE).is_file():
        data_files = _read_json_key(folder / HF_DATASET_STATE, "_data_files")
        try:
            files = [folder / entry["filename"] for entry in data_files]
        except (TypeError, KeyError):
            raise UserError(f"{folder / HF_DATASET_STATE}: '_data_files' is not a list of "
                            "{filename: ...} entries (not a Hugging Face dataset folder?)") from None
        for file in files:
            if not file.is_file():
                raise UserError(f"{file}: listed in {folder / HF_DATASET_STATE} but missing")
        return files
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            files.extend(_folder_files(entry))
        elif entry.is_file():
            files.append(entry)
    return files


def _read_json_key(path: Path, key: str) -> list:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))[key]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{path}: cannot read {key!r} ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(value, list):
        raise UserError(f"{path}: {key!r} is not a list")
    return value


def raw_lines(path: Path) -> Iterator[bytes]:
    """The lines of a plain, .gz or .zst file, as bytes with their line endings."""
    try:
        if path.suffix in (".zst", ".zstd"):
            with open(path, "rb") as handle:
                yield from _split_lines(_zstd_blocks(handle, path))
        else:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as handle:
                yield from handle
    except (OSError, EOFError, zlib.error) as exc:  # unreadable, or a corrupt / truncated .gz
        raise UserError(f"{path}: cannot read ({exc})") from None


def _zstd_blocks(handle, path: Path) -> Iterator[bytes]:
    """Decompressed data of every zstd frame in the file; a file cut off inside a frame is an
    error (zstandard's stream reader would end quietly there)."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    frame = decompressor.decompressobj()
    in_frame = False
    try:
        while block := handle.read(1 << 20):
            while block:
                yield frame.decompress(block)
                if frame.eof:  # frames may follow one another (pzstd, concatenated files)
                    block, frame, in_frame = frame.unused_data, decompressor.decompressobj(), False
                else:
                    block, in_frame = b"", True
    except zstandard.ZstdError as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    if in_frame:
        raise UserError(f"{path}: cannot read (truncated zstd frame)")


def _split_lines(blocks: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for block in blocks:
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest


class DocumentReader:
    """Iterates the documents of one file and fills `counts` as it goes."""

    def __init__(self, path: Path, jsonl_field: str = "text", strict: bool = False):
        self.path = path
        self.jsonl_field = jsonl_field  # the JSON field or the Parquet/Arrow column
        self.strict = strict
        self.counts = FileCounts(str(path))

    def __iter__(self) -> Iterator[str]:
        kind = input_kind(self.path)
        docs = {"jsonl": self._jsonl, "parquet": self._parquet, "arrow": self._arrow}.get(kind, self._text)()
        for text in docs:
            self.counts.documents += 1
            yield text

    def _skip(self, kind: str, where: int | str, message: str) -> None:
        if self.strict:
            raise UserError(f"{self.path}:{where}: {message}")
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
                self._skip("malformed_lines", number, f"no string field {field!r} ({FIELD_HINT})")
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

    def _parquet(self) -> Iterator[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(self.path)
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"{self.path}: cannot read as Parquet ({exc})") from None
        with parquet:
            self._check_column(parquet.schema_arrow)
            yield from self._rows(parquet.iter_batches(ROWS_PER_BATCH, columns=[self.jsonl_field]))

    def _arrow(self) -> Iterator[str]:
        import pyarrow as pa

        try:
            source = pa.memory_map(str(self.path))
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"{self.path}: cannot read ({exc})") from None
        with source:
            try:  # `save_to_disk` writes the stream format; pyarrow's own writers may use the file format
                stream = pa.ipc.open_stream(source)
                batches = iter(stream)
            except pa.ArrowInvalid:
                source.seek(0)
                try:
                    stream = pa.ipc.open_file(source)
                except pa.ArrowInvalid as exc:
                    raise UserError(f"{self.path}: cannot read as an Arrow file ({exc})") from None
                batches = (stream.get_batch(i) for i in range(stream.num_record_batches))
            self._check_column(stream.schema)
            yield from self._rows(batch.column(self.jsonl_field) for batch in batches)

    def _check_column(self, schema) -> None:
        import pyarrow as pa

        field = self.jsonl_field
        if field not in schema.names:
            raise UserError(f"{self.path}: no column {field!r} (columns: {', '.join(schema.names)}; "
                            f"{FIELD_HINT})")
        kind = schema.field(field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or getattr(pa.types, "is_string_view", lambda _: False)(kind)):
            raise UserError(f"{self.path}: column {field!r} holds {kind}, not strings ({FIELD_HINT})")

    def _rows(self, columns) -> Iterator[str]:
        """The texts of a column given a batch at a time (a RecordBatch or an Array per batch)."""
        import pyarrow as pa

        field = self.jsonl_field
        row = 0
        try:
            for column in columns:
                if isinstance(column, pa.RecordBatch):
                    column = column.column(0)
                for text in column.to_pylist():
                    row += 1
                    if text is None:
                        self._skip("malformed_lines", f"row {row}", f"null {field!r}")
                    elif not text.strip():
                        self._skip("empty_documents", f"row {row}", f"empty {field!r}")
                    else:
                        yield text
        except (OSError, pa.ArrowException) as exc:  # a damaged page, or bytes that are not UTF-8
            raise UserError(f"{self.path}: cannot read after row {row} ({exc})") from None


def read_documents(inputs: Iterable[str | Path], field: str = "text") -> Iterator[str]:
    """Every document of every input (files, folders, globs; any format above), in order; a bad
    record is an error here (`--strict`), as a tokenizer must not learn from a file misread."""
    for path in input_files([str(item) for item in inputs]):
        yield from DocumentReader(path, field, strict=True)
