"""Exact and near-duplicate removal with SimHash, streaming, with a record of every removal.

A document's SimHash is a 64-bit fingerprint: each word shingle (`shingle` consecutive words of
the normalized text) is hashed to 64 bits, each bit votes +1/-1, and the fingerprint keeps the
bits with a positive total. Texts that share most shingles get fingerprints a few bits apart.

Lookup without pairwise comparison: the 64 bits are cut into `threshold + 1` bands. Two
fingerprints within Hamming distance `threshold` differ in at most `threshold` bands, so by
pigeonhole they agree exactly on at least one; each band is a hash table from band value to
kept documents, and only documents sharing a band are compared. Memory is the index (a
fingerprint, a 16-byte exact hash and a few table entries per kept document), never the texts.

Documents are processed in input order and the first of a group is kept, so the output is a
pure function of the inputs and the settings.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tempfile
import unicodedata
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from xmodel2.data.readers import raw_lines, input_files, is_jsonl
from xmodel2.errors import UserError
from xmodel2.folders import check_outputs_apart

BITS = 64
_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    """NFKC, lower case, words only: what 'the same text' means for exact duplicates."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).lower()))


def exact_key(normalized: str) -> bytes:
    return hashlib.blake2b(normalized.encode("utf-8"), digest_size=16).digest()


def simhash(normalized: str, shingle: int = 3) -> int:
    """64-bit SimHash of the word shingles of a normalized text (0 for an empty text)."""
    words = normalized.split()
    if not words:
        return 0
    grams = [" ".join(words[i:i + shingle]) for i in range(max(1, len(words) - shingle + 1))]
    hashes = np.frombuffer(b"".join(hashlib.blake2b(g.encode("utf-8"), digest_size=8).digest() for g in grams),
                           dtype=np.uint8).reshape(len(grams), 8)
    votes = np.unpackbits(hashes, axis=1).astype(np.int32).sum(axis=0) * 2 - len(grams)
    return int.from_bytes(np.packbits(votes > 0).tobytes(), "big")


def band_masks(threshold: int) -> list[tuple[int, int]]:
    """(shift, mask) of each of `threshold + 1` bands covering the 64 bits."""
    bands = threshold + 1
    if not 1 <= bands <= BITS:
        raise UserError(f"--threshold must be between 0 and {BITS - 1}, got {threshold}")
    edges = [round(i * BITS / bands) for i in range(bands + 1)]
    return [(edges[i], (1 << (edges[i + 1] - edges[i])) - 1) for i in range(bands)]


@dataclass
class Match:
    kept: int  # index of the kept document it duplicates
    distance: int  # Hamming distance of the fingerprints (0 for exact duplicates)
    exact: bool


class SimHashIndex:
    """Fingerprints of kept documents, looked up through band tables."""

    def __init__(self, threshold: int = 3):
        self.threshold = threshold
        self.bands = band_masks(threshold)
        self.fingerprints = array("Q")
        self.tables: list[dict[int, int | list[int]]] = [{} for _ in self.bands]
        self.exact: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self.fingerprints)

    def find(self, fingerprint: int, key: bytes) -> Match | None:
        if key in self.exact:
            return Match(self.exact[key], 0, True)
        best: Match | None = None
        for (shift, mask), table in zip(self.bands, self.tables):
            hit = table.get((fingerprint >> shift) & mask)
            for index in (hit if isinstance(hit, list) else () if hit is None else (hit,)):
                distance = (self.fingerprints[index] ^ fingerprint).bit_count()
                if distance <= self.threshold and (best is None or (distance, index) < (best.distance, best.kept)):
                    best = Match(index, distance, False)
        return best

    def add(self, fingerprint: int, key: bytes) -> int:
        index = len(self.fingerprints)
        self.fingerprints.append(fingerprint)
        self.exact[key] = index
        for (shift, mask), table in zip(self.bands, self.tables):
            band = (fingerprint >> shift) & mask
            hit = table.get(band)
            if hit is None:
                table[band] = index  # most buckets hold one document: store it without a list
            elif isinstance(hit, list):
                hit.append(index)
            else:
                table[band] = [hit, index]
        return index


@dataclass
class Document:
    file: str
    line: int
    text: str
    raw: bytes  # the line as read, written back unchanged when kept


def read_documents(paths: list[Path], field_name: str) -> Iterator[Document]:
    """JSONL: one record per line, the text in `field_name`; other files: one document per line."""
    for path in paths:
        jsonl = is_jsonl(path)
        for number, raw in enumerate(raw_lines(path), start=1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{where}: invalid UTF-8 ({exc.reason})") from None
            if not jsonl:
                yield Document(str(path), number, line, raw if raw.endswith(b"\n") else raw + b"\n")
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: invalid JSON: {exc.msg}") from None
            if not isinstance(record, dict) or not isinstance(record.get(field_name), str):
                raise UserError(f"{where}: no string field {field_name!r} (see --field)")
            yield Document(str(path), number, record[field_name], raw if raw.endswith(b"\n") else raw + b"\n")


@dataclass
class DedupResult:
    documents: int = 0
    kept: int = 0
    exact: int = 0
    near: int = 0
    output: Path | None = None
    report: Path | None = None
    distances: dict[int, int] = field(default_factory=dict)  # Hamming distance -> near duplicates

    def summary(self) -> str:
        return (f"{self.documents:,} documents: kept {self.kept:,}, removed {self.exact:,} exact and "
                f"{self.near:,} near duplicates -> {self.output} (removals listed in {self.report})")


def report_path(output: Path) -> Path:
    name = output.name.removesuffix(".gz")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return output.with_name(f"{stem}.removed.jsonl")


class _AtomicFile:
    """A temp file beside `path`, renamed onto it only by `commit()`."""

    def __init__(self, path: Path, compress: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self.path = path
        self.raw = os.fdopen(fd, "wb")
        self.handle = gzip.GzipFile(filename="", mode="wb", fileobj=self.raw, mtime=0) if compress else self.raw

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def commit(self) -> None:
        if self.handle is not self.raw:
            self.handle.close()
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.raw.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def deduplicate(inputs: list[str], output: str | Path, threshold: int = 3, field_name: str = "text",
                shingle: int = 3, buckets: int | None = None, tasks: int = 1, workers: int = 1) -> DedupResult:
    """Write the inputs without exact and near duplicates to `output`, and the removals beside it.
    With `buckets`, as datatrove stages (dedup_pipeline.py) in `tasks` tasks on `workers` local
    processes, holding one bucket of signatures at a time instead of the whole index; the same
    documents are kept and the same removals reported."""
    paths = input_files(inputs)
    if not paths:
        raise UserError("no input files")
    kinds = {is_jsonl(p) for p in paths}
    if len(kinds) > 1:
        raise UserError("inputs mix JSONL and text files; deduplicate them separately")
    output = Path(output)
    # The removal report is an output too: `dedup X.removed.jsonl --out X.jsonl` must not
    # overwrite its input with the report, nor may an output land inside an input folder.
    check_outputs_apart([output], [*inputs, *paths])
    check_outputs_apart([report_path(output)], [*inputs, *paths], role=f"the removal report of --out {output}")
    for path in (output, report_path(output)):
        if path.is_dir():
            raise UserError(f"{path}: is a folder; dedup writes a file there")
    if shingle < 1:
        raise UserError(f"shingle size must be positive, got {shingle}")
    if buckets is not None:
        from xmodel2.data.dedup_pipeline import deduplicate_in_stages

        if buckets < 1 or tasks < 1 or workers < 1:
            raise UserError(f"--buckets, --tasks and --workers must be at least 1, got {buckets}, {tasks}, {workers}")
        band_masks(threshold)  # the threshold's error, before any task runs
        return deduplicate_in_stages(paths, output, report_path(output), threshold, field_name, shingle, buckets,
                                     tasks, workers)
    result = DedupResult(output=output, report=report_path(output))
    index = SimHashIndex(threshold)
    files: dict[str, int] = {}
    kept_file, kept_line = array("I"), array("Q")  # where each kept document came from
    out = _AtomicFile(output, output.suffix == ".gz")
    removed = _AtomicFile(result.report, False)
    try:
        for doc in read_documents(paths, field_name):
            result.documents += 1
            normalized = normalize(doc.text)
            key = exact_key(normalized)
            fingerprint = simhash(normalized, shingle)
            match = index.find(fingerprint, key)
            if match is None:
                index.add(fingerprint, key)
                kept_file.append(files.setdefault(doc.file, len(files)))
                kept_line.append(doc.line)
                out.write(doc.raw)
                result.kept += 1
                continue
            original = {"file": list(files)[kept_file[match.kept]], "line": kept_line[match.kept]}
            if match.exact:
                result.exact += 1
            else:
                result.near += 1
                result.distances[match.distance] = result.distances.get(match.distance, 0) + 1
            removed.write((json.dumps({
                "file": doc.file, "line": doc.line, "reason": "exact" if match.exact else "near",
                "distance": match.distance, "duplicate_of": original,
                "preview": doc.text[:80]}, ensure_ascii=False) + "\n").encode("utf-8"))
        out.commit()
        removed.commit()
    except BaseException:
        out.discard()
        removed.discard()
        raise
    return result
