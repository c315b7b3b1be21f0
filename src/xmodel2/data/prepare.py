"""Text, JSON Lines, Parquet and Hugging Face dataset files (see readers.py) → one token shard
folder, with worker processes, resumably.

How a run is made safe to kill and to repeat:
- The documents are cut, in input order, into chunks of about `chunk_chars` characters. A chunk
  is identified by a hash of its texts and the tokenizer, so the plan is a pure function of the
  inputs.
- Workers encode chunks and commit each as a part file (written to a temp name, then renamed)
  in a staging folder beside the output, `.NAME.parts/`. A re-run skips every part whose hash
  matches, so a killed run resumes where it stopped and nothing is encoded twice.
- When every part exists they are concatenated, in chunk order, into the shard folder, which
  appears in one rename (`atomic_directory`); then the staging folder is removed.
- A finished shard records a hash of the whole request; preparing the same request again reads
  the inputs, finds the same hash and writes nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import multiprocessing
import shutil
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from xmodel2.data.executors import SlurmOptions, SlurmSubmission, check_sbatch, run_ray, run_slurm
from xmodel2.data.pipeline import PART_MAGIC as _PART_MAGIC
from xmodel2.data.pipeline import EncodeFiles, HashingReader, part_digest, run_local
from xmodel2.data.pipeline import part_path as _part_path
from xmodel2.data.readers import DocumentReader, FileCounts, input_files
from xmodel2.data.shards import (DOCUMENTS_FILE, FORMAT, META_FILE, TOKENS_FILE, VERSION, numpy_dtype,
                                 token_dtype)
from xmodel2.errors import UserError
from xmodel2.fileio import atomic_directory, atomic_write_bytes, atomic_write_json, read_json

DEFAULT_CHUNK_CHARS = 1 << 20
EXECUTORS = ("pool", "local", "slurm", "ray")
_HEADER = len(_PART_MAGIC) + 32 + 16  # magic, chunk hash, document and token counts


@dataclass
class Chunk:
    index: int
    texts: list[str]
    files: list[int]  # input-file index of each document
    digest: bytes = b""


@dataclass
class PrepareResult:
    out: Path
    meta: dict
    up_to_date: bool = False
    encoded_chunks: int = 0
    reused_chunks: int = 0
    files: list[FileCounts] = field(default_factory=list)
    submission: SlurmSubmission | None = None  # --executor slurm: the shard is joined by a later job


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.parts"


def _chunks(readers: list[DocumentReader], chunk_chars: int, salt: bytes) -> Iterator[Chunk]:
    """Documents of all files in order, grouped into chunks; each chunk hashed with `salt`."""
    chunk = Chunk(0, [], [])
    size = 0
    for file_index, reader in enumerate(readers):
        for text in reader:
            chunk.texts.append(text)
            chunk.files.append(file_index)
            size += len(text)
            if size >= chunk_chars:
                yield _sealed(chunk, salt)
                chunk, size = Chunk(chunk.index + 1, [], []), 0
    if chunk.texts:
        yield _sealed(chunk, salt)


def _sealed(chunk: Chunk, salt: bytes) -> Chunk:
    digest = hashlib.sha256(salt)
    for text in chunk.texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    chunk.digest = digest.digest()
    return chunk


def _read_part(path: Path, digest: bytes, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray] | None:
    """(document lengths, tokens) of a committed part, or None if absent or for another chunk."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if data[:len(_PART_MAGIC)] != _PART_MAGIC or data[len(_PART_MAGIC):len(_PART_MAGIC) + 32] != digest:
        return None
    docs, tokens = np.frombuffer(data, "<u8", 2, len(_PART_MAGIC) + 32)
    lengths = np.frombuffer(data, "<u8", int(docs), _HEADER)
    body = _HEADER + 8 * int(docs)
    if len(data) != body + int(tokens) * dtype.itemsize:
        return None
    return lengths, np.frombuffer(data, dtype, int(tokens), body)


# --- worker side (module-level so that spawned processes can import it) ---
_worker_tokenizer = None


def _init_worker(tokenizer_path: str, one_thread: bool = False) -> None:
    global _worker_tokenizer
    from xmodel2.tokenizer import load_tokenizer

    _worker_tokenizer = load_tokenizer(tokenizer_path)
    if one_thread:  # the pool's processes already share the cores out
        _worker_tokenizer.use_one_thread()


def _encode_chunk(job: tuple[int, bytes, list[str], str, str]) -> int:
    """Encode one chunk and commit it as a part file; returns its token count."""
    index, digest, texts, staging, dtype_name = job
    ids = _worker_tokenizer.encode_batch(texts, add_eos=True)
    lengths = np.fromiter((len(x) for x in ids), dtype="<u8", count=len(ids))
    dtype = numpy_dtype(dtype_name)
    tokens = np.concatenate([np.asarray(x, dtype=dtype) for x in ids]) if ids else np.empty(0, dtype)
    header = _PART_MAGIC + digest + np.array([len(ids), tokens.size], "<u8").tobytes()
    atomic_write_bytes(_part_path(Path(staging), index), header + lengths.tobytes() + tokens.tobytes())
    return int(tokens.size)


class _Encoder:
    """Runs `_encode_chunk` in this process (workers=1) or in a spawn pool, a bounded window ahead."""

    def __init__(self, tokenizer_path: str, workers: int):
        self.pool = None
        if workers > 1:
            self.pool = multiprocessing.get_context("spawn").Pool(
                workers, initializer=_init_worker, initargs=(tokenizer_path, True))
            self.window = 2 * workers
        else:
            _init_worker(tokenizer_path)
        self.pending: deque = deque()

    def submit(self, job) -> Iterator[int]:
        """Queue a job; yields token counts of jobs that had to finish to make room."""
        if self.pool is None:
            yield _encode_chunk(job)
            return
        self.pending.append(self.pool.apply_async(_encode_chunk, (job,)))
        while len(self.pending) > self.window:
            yield self.pending.popleft().get()

    def drain(self) -> Iterator[int]:
        while self.pending:
            yield self.pending.popleft().get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def prepare(inputs: list[str], tokenizer_path: str, out: str | Path, jsonl_field: str = "text",
            workers: int = 2, strict: bool = False, chunk_chars: int = DEFAULT_CHUNK_CHARS,
            progress: bool = True, executor: str = "pool", tasks: int | None = None,
            slurm: SlurmOptions | None = None, join_command: list[str] | None = None,
            ray_address: str | None = None, ray_mem_per_cpu_gb: float = 1) -> PrepareResult:
    """Encode `inputs` into the shard folder `out`. executor `pool`: chunks of about `chunk_chars`
    encoded by `workers` processes of this machine; `local`, `ray`, `slurm`: input files encoded by
    `tasks` datatrove tasks (one per input file by default), at most `workers` at once (local, Ray).
    All give the same shard bytes. `slurm` submits the tasks and a job running `join_command`,
    which joins the parts once they are all finished, and returns at once (`submission`)."""
    from xmodel2.tokenizer import load_tokenizer

    out = Path(out)
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if chunk_chars < 1:
        raise UserError(f"--chunk-chars must be at least 1, got {chunk_chars}")
    if executor not in EXECUTORS:
        raise UserError(f"--executor: unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if tasks is not None and tasks < 1:
        raise UserError(f"--tasks must be at least 1, got {tasks}")
    if executor == "slurm":
        if slurm is None or join_command is None:
            raise ValueError("executor 'slurm' needs slurm options and a join command")
        check_sbatch(slurm)
    if executor == "ray" and importlib.util.find_spec("ray") is None:  # before the reading pass
        raise UserError("--executor ray needs ray: pip install 'xmodel2[ray]'")
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.eos_id is None:
        raise UserError(f"{tokenizer_path}: tokenizer has no EOS token to end documents with")
    dtype_name = token_dtype(tokenizer.vocab_size)
    salt = f"{FORMAT}/{VERSION}/{tokenizer.fingerprint}/{dtype_name}\n".encode()
    files = input_files(inputs)
    if not files:
        raise UserError(f"{' '.join(map(str, inputs))}: no input files found")

    def readers() -> list[DocumentReader]:
        return [DocumentReader(path, jsonl_field, strict) for path in files]

    if (out / META_FILE).is_file():
        request = _request_hash(salt, _chunks(readers(), chunk_chars, salt))
        old = read_json(out / META_FILE, "shard metadata (meta.json)")
        if isinstance(old, dict) and old.get("request_sha256") == request:
            return PrepareResult(out, old, up_to_date=True)

    if executor != "pool":
        run = _executor_runner(executor, workers, slurm, join_command, ray_address, ray_mem_per_cpu_gb)
        return _prepare_with_datatrove(files, readers(), tokenizer, str(tokenizer_path), out, salt, dtype_name,
                                       run, tasks or len(files), chunk_chars, jsonl_field)
    staging = staging_dir(out)
    staging.mkdir(parents=True, exist_ok=True)
    try:
        result = _encode_and_write(readers(), tokenizer, str(tokenizer_path), out, staging, salt,
                                   dtype_name, workers, chunk_chars, progress, jsonl_field)
    except UserError:
        shutil.rmtree(staging, ignore_errors=True)  # bad input: leave nothing behind
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return result


def _request_hash(salt: bytes, chunks: Iterator[Chunk]) -> str:
    digest = hashlib.sha256(salt)
    for chunk in chunks:
        digest.update(chunk.digest)
    return digest.hexdigest()


def _encode_and_write(readers: list[DocumentReader], tokenizer, tokenizer_path: str, out: Path,
                      staging: Path, salt: bytes, dtype_name: str, workers: int, chunk_chars: int,
                      progress: bool, jsonl_field: str) -> PrepareResult:
    from tqdm import tqdm

    dtype = numpy_dtype(dtype_name)
    plan: list[Chunk] = []  # texts dropped once submitted; only hashes and file indices kept
    request = hashlib.sha256(salt)
    reused = 0
    encoder = _Encoder(tokenizer_path, workers)
    # disable=None: a bar on a terminal, silence in logs and pipes
    bar = tqdm(desc=f"prepare {out.name}", unit="tok", unit_scale=True,
               disable=None if progress else True, file=sys.stderr)
    try:
        for chunk in _chunks(readers, chunk_chars, salt):
            request.update(chunk.digest)
            texts, chunk.texts = chunk.texts, []
            plan.append(chunk)
            if _read_part(_part_path(staging, chunk.index), chunk.digest, dtype) is not None:
                reused += 1
                continue
            for count in encoder.submit((chunk.index, chunk.digest, texts, str(staging), dtype_name)):
                bar.update(count)
        for count in encoder.drain():
            bar.update(count)
    finally:
        encoder.close()
        bar.close()
    counts = [reader.counts for reader in readers]
    if not plan:
        skipped = sum(c.skipped for c in counts)
        raise UserError(f"{', '.join(c.path for c in counts)}: no documents to prepare "
                        f"({skipped} lines or files skipped as malformed, invalid UTF-8 or empty)")
    meta = _concatenate(plan, staging, out, dtype, counts, request.hexdigest(), tokenizer, tokenizer_path,
                        dtype_name, jsonl_field)
    return PrepareResult(out, meta, encoded_chunks=len(plan) - reused, reused_chunks=reused, files=counts)


def _concatenate(plan: list[Chunk], staging: Path, out: Path, dtype: np.dtype, counts: list[FileCounts],
                 request: str, tokenizer, tokenizer_path: str, dtype_name: str, jsonl_field: str) -> dict:
    lengths_all = []
    digest = hashlib.sha256()
    with atomic_directory(out, kind="shards") as tmp:
        with open(tmp / TOKENS_FILE, "wb") as handle:
            for chunk in plan:
                part = _read_part(_part_path(staging, chunk.index), chunk.digest, dtype)
                if part is None or len(part[0]) != len(chunk.files):
                    raise RuntimeError(f"part {chunk.index} missing or damaged in {staging}")
                lengths, tokens = part
                data = tokens.tobytes()
                handle.write(data)
                digest.update(data)
                lengths_all.append(lengths)
                file_tokens = np.bincount(chunk.files, weights=lengths, minlength=len(counts))
                for i in np.flatnonzero(file_tokens):
                    counts[i].tokens += int(file_tokens[i])
        lengths = np.concatenate(lengths_all)
        offsets = np.zeros(len(lengths) + 1, dtype=np.uint64)
        np.cumsum(lengths, out=offsets[1:])
        np.save(tmp / DOCUMENTS_FILE, offsets, allow_pickle=False)
        meta = {
            "format": FORMAT, "version": VERSION,
            "tokenizer": {"path": tokenizer_path, "fingerprint": tokenizer.fingerprint,
                          "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id},
            "dtype": dtype_name, "byte_order": "little",
            "tokens": int(offsets[-1]), "documents": int(len(lengths)),
            "sha256": digest.hexdigest(), "request_sha256": request,
            "jsonl_field": jsonl_field,
            "skipped": {key: sum(getattr(c, key) for c in counts)
                        for key in ("malformed_lines", "invalid_utf8", "empty_documents")},
            "files": [c.as_dict() for c in counts],
        }
        atomic_write_json(tmp / META_FILE, meta)
    return meta


def _executor_runner(executor: str, workers: int, slurm: SlurmOptions | None, join_command: list[str] | None,
                     ray_address: str | None, ray_mem_per_cpu_gb: float):
    """A function (step, tasks, logging folder) that runs the step's tasks on `executor`; it returns
    a SlurmSubmission where the tasks were only submitted, else None."""
    if executor == "local":
        return lambda step, tasks, logs: run_local(step, tasks, workers, logs)
    if executor == "ray":
        return lambda step, tasks, logs: run_ray(step, tasks, workers, ray_address, ray_mem_per_cpu_gb, logs)
    return lambda step, tasks, logs: run_slurm(step, tasks, slurm, logs, join_command)


def _prepare_with_datatrove(files: list[Path], readers: list[DocumentReader], tokenizer, tokenizer_path: str,
                            out: Path, salt: bytes, dtype_name: str, run, tasks: int,
                            chunk_chars: int, jsonl_field: str) -> PrepareResult:
    """One reading pass here counts (or, strict, refuses) bad records and hashes the request as
    the pool does, so that meta.json is the same; then datatrove tasks encode one part per input
    file and the parts are concatenated in file order."""
    hashing = [HashingReader(reader, salt) for reader in readers]
    request = _request_hash(salt, _chunks(hashing, chunk_chars, salt))
    digests = [reader.hash.digest() for reader in hashing]
    counts = [reader.counts for reader in readers]
    if (out / META_FILE).is_file():
        old = read_json(out / META_FILE, "shard metadata (meta.json)")
        if isinstance(old, dict) and old.get("request_sha256") == request:
            return PrepareResult(out, old, up_to_date=True, files=counts)
    if not any(c.documents for c in counts):
        skipped = sum(c.skipped for c in counts)
        raise UserError(f"{', '.join(c.path for c in counts)}: no documents to prepare "
                        f"({skipped} lines or files skipped as malformed, invalid UTF-8 or empty)")
    staging = staging_dir(out)
    staging.mkdir(parents=True, exist_ok=True)
    wanted = [i for i, c in enumerate(counts) if c.documents]
    reused = sum(1 for i in wanted if part_digest(_part_path(staging, i)) == digests[i])
    if reused < len(wanted):  # all parts finished (say, by a Slurm job): only join them
        step = EncodeFiles([str(f) for f in files], digests, tokenizer_path, jsonl_field, str(staging), dtype_name,
                           salt)
        submission = run(step, min(tasks, len(files)), staging / "logs")
        if submission is not None:
            return PrepareResult(out, {}, files=counts, submission=submission)
    plan = []
    for index, file_counts in enumerate(counts):
        if file_counts.documents:
            if part_digest(_part_path(staging, index)) != digests[index]:
                raise RuntimeError(f"{files[index]}: its datatrove task left no part; see {staging / 'logs'}")
            plan.append(Chunk(index, [], [index] * file_counts.documents, digests[index]))
    meta = _concatenate(plan, staging, out, numpy_dtype(dtype_name), counts, request, tokenizer, tokenizer_path,
                        dtype_name, jsonl_field)
    shutil.rmtree(staging, ignore_errors=True)
    return PrepareResult(out, meta, encoded_chunks=len(plan) - reused, reused_chunks=reused, files=counts)
