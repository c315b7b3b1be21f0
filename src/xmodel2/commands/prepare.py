"""`xmodel2 prepare`: tokenize text, JSON Lines, Parquet or Hugging Face dataset files into one token shard folder."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("tokenize text, JSONL (.gz/.zst), Parquet or Hugging Face dataset folders into a token shard "
        "(tokens.bin, documents.npy, meta.json)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="text files (one document each, optionally .gz/.zst), JSON Lines files "
                             "(.jsonl/.json/.ndjson, plain, .gz or .zst: one document a line), Parquet "
                             "files, Hugging Face dataset folders (save_to_disk output), folders or globs "
                             "of any mix; with --check, shard folders to verify")
    parser.add_argument("--tokenizer", help="tokenizer.model, tokenizer.json or a folder holding one")
    parser.add_argument("--out", help="shard folder to write")
    parser.add_argument("--text-field", "--jsonl-field", dest="text_field", default="text",
                        help="JSON field or Parquet/Arrow column holding the text (default: text)")
    parser.add_argument("--workers", type=int, default=2, help="tokenizer processes (default: 2)")
    parser.add_argument("--executor", default="pool",
                        help="pool: chunks encoded by a process pool of this machine (default); local: "
                             "input files encoded as datatrove tasks in --workers local processes. "
                             "Both write the same shard bytes")
    parser.add_argument("--tasks", type=int, default=None,
                        help="datatrove tasks (--executor local; default: one per input file)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first malformed line or row, invalid UTF-8 or empty document "
                             "instead of skipping and counting it")
    parser.add_argument("--chunk-chars", type=int, default=None,
                        help="characters of text per unit of work and of resumption (default: 1 Mi)")
    parser.add_argument("--check", action="store_true",
                        help="verify existing shard folders instead: sizes, checksum and token ids")


def run(args: argparse.Namespace) -> int:
    from xmodel2.data.prepare import DEFAULT_CHUNK_CHARS, prepare
    from xmodel2.data.readers import input_files, input_kind
    from xmodel2.data.shards import ShardReader
    from xmodel2.errors import UserError
    from xmodel2.folders import check_outputs_apart

    if args.check:
        for path in args.inputs:
            reader = ShardReader(path)
            reader.verify()
            print(f"{path}: ok, {reader.num_tokens:,} tokens, {reader.num_documents:,} documents, "
                  f"{reader.meta['dtype']}, vocabulary {reader.vocab_size:,}")
        return 0
    if not args.tokenizer or not args.out:
        raise UserError("prepare needs --tokenizer PATH and --out DIR")
    check_outputs_apart([args.out], [*args.inputs, *input_files(args.inputs), args.tokenizer])
    result = prepare(args.inputs, args.tokenizer, args.out, jsonl_field=args.text_field,
                     workers=args.workers, strict=args.strict,
                     chunk_chars=args.chunk_chars or DEFAULT_CHUNK_CHARS, executor=args.executor,
                     tasks=args.tasks)
    meta = result.meta
    if result.up_to_date:
        print(f"{result.out}: up to date ({meta['tokens']:,} tokens, {meta['documents']:,} documents)")
        return 0
    for counts in result.files:
        if counts.skipped:
            records = "rows" if input_kind(Path(counts.path)) in ("parquet", "arrow") else "lines"
            print(f"{counts.path}: skipped {counts.malformed_lines} malformed {records}, {counts.invalid_utf8} "
                  f"invalid UTF-8, {counts.empty_documents} empty documents")
    resumed = f", {result.reused_chunks} chunks reused from an interrupted run" if result.reused_chunks else ""
    print(f"{result.out}: {meta['tokens']:,} tokens, {meta['documents']:,} documents from "
          f"{len(meta['files'])} files ({meta['dtype']}){resumed}")
    return 0
