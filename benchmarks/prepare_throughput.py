#!/usr/bin/env python3
"""Throughput of `xmodel2 prepare` on the datatrove local executor against plain SentencePiece.

Everything encodes the same documents of the bundled corpus with the same tokenizer:

- the baseline: one process, one thread of SentencePiece encoding, texts already in memory;
- `prepare` end to end (read, decode, encode, write parts, join the shard) with the local
  executor at 1 and 2 workers, on Parquet and on `.jsonl.zst` copies of the corpus that this
  script writes (split into --files files, since a datatrove task encodes one input file).

A prepare worker encodes its batches with SentencePiece's default thread count (every CPU), so
"1 worker" is one process, not one thread, and 2 workers on 2 CPUs run more threads than CPUs.
Each figure is the median of --repeats runs; the table gives tokens/s and the ratio to the
baseline. Without --tokenizer, a tokenizer is trained once on the bundled corpus into a cache
folder (--cache) and reused by later runs. On a machine running other work the ratios move with
the load: give the load average along with the numbers.

Usage: python benchmarks/prepare_throughput.py [--tokenizer PATH] [--repeats 3] [--files 4] [--copies 1]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from xmodel2.data import corpus_file
from xmodel2.data.corpus import TRAIN_PARTS
from xmodel2.data.prepare import prepare

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "xmodel2-bench-tokenizer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer folder or .model file (default: one trained on the bundled corpus)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="of the trained tokenizer")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where it is trained once")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--files", type=int, default=4, help="input files per format")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--copies", type=int, default=1,
                        help="the corpus this many times over: a larger job spreads the workers' start-up")
    args = parser.parse_args()

    texts = corpus_texts() * args.copies
    print(f"corpus: {len(texts):,} documents, {sum(map(len, texts)):,} characters ({', '.join(TRAIN_PARTS)})")
    tokenizer = args.tokenizer or bundled_tokenizer(args.cache / f"vocab{args.vocab_size}", args.vocab_size)
    print(f"tokenizer: {tokenizer}")
    print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")

    tokens, baseline = sentencepiece_rate(texts, tokenizer, args.repeats)
    print(f"{tokens:,} tokens (with one EOS per document)")
    rows = [("sentencepiece encode, 1 process, 1 thread", baseline)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = {"Parquet": write_parquet(texts, tmp / "parquet", args.files),
                  ".jsonl.zst": write_jsonl_zst(texts, tmp / "zst", args.files)}
        for name, files in inputs.items():
            for workers in args.workers:
                rate = prepare_rate(files, tokenizer, tmp / "out", workers, args.repeats, tokens)
                rows.append((f"xmodel2 prepare, {name}, local executor, {workers} worker(s)", rate))
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(f"{'':<58}{'tokens/s':>12}  {'ratio':>6}   (median of {args.repeats})")
    for label, rate in rows:
        print(f"{label:<58}{rate:>12,.0f}  {rate / baseline:>5.2f}x")


def corpus_texts() -> list[str]:
    texts = []
    for part in TRAIN_PARTS:
        with gzip.open(corpus_file(part), "rt", encoding="utf-8") as handle:
            texts += [json.loads(line)["text"] for line in handle]
    return texts


def bundled_tokenizer(folder: Path, vocab_size: int) -> Path:
    from xmodel2.tokenizer.train import MODEL_NAME, train_tokenizer

    if not (folder / MODEL_NAME).is_file():
        print(f"training a {vocab_size}-piece tokenizer on the bundled corpus into {folder} (once)")
        train_tokenizer([corpus_file(p) for p in TRAIN_PARTS], folder, vocab_size=vocab_size,
                        max_sentences=100_000)
    return folder


def sentencepiece_rate(texts: list[str], tokenizer: Path, repeats: int) -> tuple[int, float]:
    import sentencepiece as spm

    from xmodel2.tokenizer.train import MODEL_NAME

    model = tokenizer / MODEL_NAME if tokenizer.is_dir() else tokenizer
    sp = spm.SentencePieceProcessor(model_file=str(model))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        ids = sp.encode(texts, num_threads=1)
        seconds.append(time.perf_counter() - start)
    tokens = sum(len(x) for x in ids) + len(ids)  # + one EOS per document, as in a shard
    return tokens, tokens / statistics.median(seconds)


def prepare_rate(files: list[Path], tokenizer: Path, out: Path, workers: int, repeats: int,
                 tokens: int) -> float:
    seconds = []
    for index in range(repeats):
        shard = out / f"w{workers}-{files[0].suffix}-{index}"
        start = time.perf_counter()
        with stderr_to(out / "datatrove.log"):
            meta = prepare([str(f) for f in files], str(tokenizer), shard, executor="local",
                           workers=workers, progress=False).meta
        seconds.append(time.perf_counter() - start)
        if meta["tokens"] != tokens:
            raise SystemExit(f"prepare wrote {meta['tokens']:,} tokens, sentencepiece gave {tokens:,}")
    return tokens / statistics.median(seconds)


@contextlib.contextmanager
def stderr_to(log: Path):
    """datatrove reports every task on stderr, from the worker processes too (they inherit the
    descriptor): into `log`, so the table stays readable; the log's tail is shown on a failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(2)
    try:
        with log.open("ab") as handle:
            os.dup2(handle.fileno(), 2)
            try:
                yield
            except BaseException:
                sys.stderr.flush()
                os.dup2(saved, 2)
                print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
                raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _split(texts: list[str], parts: int) -> list[list[str]]:
    size = -(-len(texts) // parts)
    return [texts[i:i + size] for i in range(0, len(texts), size)]


def write_parquet(texts: list[str], folder: Path, parts: int) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    files = []
    for index, chunk in enumerate(_split(texts, parts)):
        path = folder / f"part-{index:03d}.parquet"
        pq.write_table(pa.table({"text": chunk}), path, row_group_size=1000)
        files.append(path)
    return files


def write_jsonl_zst(texts: list[str], folder: Path, parts: int) -> list[Path]:
    import zstandard

    folder.mkdir(parents=True)
    files = []
    for index, chunk in enumerate(_split(texts, parts)):
        path = folder / f"part-{index:03d}.jsonl.zst"
        lines = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in chunk)
        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(lines.encode("utf-8")))
        files.append(path)
    return files


if __name__ == "__main__":
    main()
