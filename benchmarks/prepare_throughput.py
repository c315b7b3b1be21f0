#!/usr/bin/env python3
"""Throughput of `xmodel2 prepare` with N worker processes against plain single-process SentencePiece.

Both sides encode the same documents of the bundled corpus with the same tokenizer. The
SentencePiece baseline only encodes (texts already in memory, one thread); `prepare` does the
whole job: reading and parsing the JSONL, encoding, writing parts and the final shard.

Usage: python benchmarks/prepare_throughput.py [--tokenizer PATH] [--workers 2] [--parts wiki-train ...]
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

from xmodel2.data import corpus_file
from xmodel2.data.corpus import TRAIN_PARTS
from xmodel2.data.prepare import prepare

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "xmodel2-tokenizer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, default=REFERENCE / "tokenizer.model")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--parts", nargs="+", default=list(TRAIN_PARTS))
    args = parser.parse_args()

    import sentencepiece as spm

    files = [corpus_file(p) for p in args.parts]
    texts = []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            texts += [json.loads(line)["text"] for line in handle]
    chars = sum(len(t) for t in texts)
    print(f"corpus: {len(texts):,} documents, {chars:,} characters from {', '.join(args.parts)}")
    print(f"tokenizer: {args.tokenizer}")

    sp = spm.SentencePieceProcessor(model_file=str(args.tokenizer))
    start = time.perf_counter()
    ids = sp.encode(texts, num_threads=1)
    baseline_s = time.perf_counter() - start
    tokens = sum(len(x) for x in ids) + len(ids)  # + one EOS per document, as in a shard
    baseline = tokens / baseline_s
    print(f"sentencepiece, 1 process, 1 thread:   {baseline:>12,.0f} tokens/s ({baseline_s:.2f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        meta = prepare([str(f) for f in files], str(args.tokenizer), Path(tmp) / "shard",
                       workers=args.workers, progress=False).meta
        prepare_s = time.perf_counter() - start
    assert meta["tokens"] == tokens, (meta["tokens"], tokens)
    rate = tokens / prepare_s
    print(f"xmodel2 prepare, {args.workers} workers (end to end): {rate:>12,.0f} tokens/s ({prepare_s:.2f} s)")
    print(f"ratio prepare / sentencepiece: {rate / baseline:.2f}x")


if __name__ == "__main__":
    main()
