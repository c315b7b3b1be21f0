"""The encoding step of `prepare` as a datatrove pipeline step, run by datatrove's executors.

Task t of N encodes input files t, t+N, t+2N, ... each into one part file (`part-<file index>`)
in the staging folder; `prepare` then concatenates the parts in input-file order. A shard is the
documents' encodings in input order, so it is the same bytes whatever the executor, the number of
tasks or the number of worker processes. A part records a hash of its file's texts; a repeated
run skips every file whose part holds the expected hash, so a killed prepare redoes only the files
that had not finished, and a changed file is encoded again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from xmodel2.data.readers import DocumentReader
from xmodel2.data.shards import numpy_dtype
from xmodel2.errors import UserError

PART_MAGIC = b"XM2PART1"
BATCH_CHARS = 1 << 20  # text handed to the tokenizer at once


def part_path(staging: Path, index: int) -> Path:
    return staging / f"part-{index:08d}.bin"


class EncodeFiles:
    """A datatrove pipeline step (a callable of data, rank, world_size) that encodes this task's
    share of the input files. Readers are not strict: bad records were counted (or refused, with
    --strict) by `prepare` before any task ran."""

    def __init__(self, files: list[str], digests: list[bytes], tokenizer_path: str, text_field: str,
                 staging: str, dtype_name: str, salt: bytes):
        self.files = files
        self.digests = digests  # expected sha256 of each file's salted texts
        self.tokenizer_path = tokenizer_path
        self.text_field = text_field
        self.staging = staging
        self.dtype_name = dtype_name
        self.salt = salt

    def __repr__(self) -> str:  # what datatrove's log shows as the pipeline
        return f"xmodel2 encode: {len(self.files)} input files -> {self.staging}"

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        from xmodel2.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(self.tokenizer_path)
        if world_size > 1:  # the tasks' processes already share the cores out
            tokenizer.use_one_thread()
        for index in range(rank, len(self.files), world_size):
            if part_digest(part_path(Path(self.staging), index)) != self.digests[index]:
                self.encode_file(tokenizer, index)
        return data

    def encode_file(self, tokenizer, index: int) -> None:
        """Write the part of input file `index`: header (magic, sha256 of the salted texts,
        document and token counts), document lengths, tokens."""
        staging = Path(self.staging)
        dtype = numpy_dtype(self.dtype_name)
        digest = hashlib.sha256(self.salt)
        lengths: list[int] = []
        with tempfile.TemporaryFile(dir=staging) as tokens_file:
            batch: list[str] = []
            size = 0
            for text in DocumentReader(Path(self.files[index]), self.text_field):
                data = text.encode("utf-8")
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
                batch.append(text)
                size += len(text)
                if size >= BATCH_CHARS:
                    _write_encoded(tokenizer, batch, dtype, tokens_file, lengths)
                    batch, size = [], 0
            if batch:
                _write_encoded(tokenizer, batch, dtype, tokens_file, lengths)
            header = PART_MAGIC + digest.digest() + np.array([len(lengths), sum(lengths)], "<u8").tobytes()
            tokens_file.seek(0)
            _atomic_write_streams(part_path(staging, index),
                                  [header, np.asarray(lengths, "<u8").tobytes()], tokens_file)


def part_digest(path: Path) -> bytes | None:
    """The text hash a committed part records, or None if there is none."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(PART_MAGIC) + 32)
    except FileNotFoundError:
        return None
    return head[len(PART_MAGIC):] if head[:len(PART_MAGIC)] == PART_MAGIC else None


class HashingReader:
    """A DocumentReader that also hashes its texts (salted, length-prefixed) as they pass."""

    def __init__(self, reader: DocumentReader, salt: bytes):
        self.reader = reader
        self.counts = reader.counts
        self.hash = hashlib.sha256(salt)

    def __iter__(self):
        for text in self.reader:
            data = text.encode("utf-8")
            self.hash.update(len(data).to_bytes(8, "little"))
            self.hash.update(data)
            yield text


def _write_encoded(tokenizer, texts: list[str], dtype: np.dtype, out, lengths: list[int]) -> None:
    for ids in tokenizer.encode_batch(texts, add_eos=True):
        lengths.append(len(ids))
        out.write(np.asarray(ids, dtype=dtype).tobytes())


def _atomic_write_streams(path: Path, heads: list[bytes], body) -> None:
    """`heads` then the whole of the open file `body`, under a temp name renamed onto `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for head in heads:
                handle.write(head)
            shutil.copyfileobj(body, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_local(step: EncodeFiles, tasks: int, workers: int, logging_dir: Path) -> None:
    """Run `step` as `tasks` datatrove tasks in at most `workers` local processes."""
    try:
        from datatrove.executor import LocalPipelineExecutor
    except ImportError:
        raise UserError("--executor local needs datatrove: pip install 'xmodel2[datatrove]'") from None

    # Resumption is by part hashes (see the module docstring), not by datatrove's task markers,
    # which would also skip a task whose input changed since.
    executor = LocalPipelineExecutor(pipeline=[step], tasks=tasks, workers=workers, skip_completed=False,
                                     logging_dir=str(logging_dir), start_method="spawn")
    executor.run()
