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
                             "input files encoded as datatrove tasks in --workers local processes; ray: "
                             "datatrove tasks on a Ray cluster (--ray-address) or on one started here; "
                             "slurm: datatrove tasks as a Slurm job array, submitted with sbatch together "
                             "with a dependent job that joins the finished parts into the shard (after the "
                             "array has finished, this prepare run again, or with --executor local, only joins "
                             "them; run before, it submits the unfinished files again). All write "
                             "the same shard bytes")
    parser.add_argument("--tasks", type=int, default=None,
                        help="datatrove tasks (local, ray, slurm; default: one per input file)")
    cluster = parser.add_argument_group("--executor slurm / ray")
    cluster.add_argument("--partition", help="Slurm partition to run the tasks in")
    cluster.add_argument("--time", default="24:00:00", help="Slurm time limit of each task (default: 24:00:00)")
    cluster.add_argument("--cpus-per-task", type=int, default=1, help="Slurm CPUs per task (default: 1)")
    cluster.add_argument("--mem-per-cpu-gb", type=float, default=None,
                         help="memory per CPU in GB that a task reserves (default: 2 on Slurm, 1 on Ray)")
    cluster.add_argument("--slurm-dry-run", action="store_true",
                         help="write the Slurm job scripts into the staging folder without submitting them")
    cluster.add_argument("--ray-address", default=None,
                         help="address of a running Ray cluster (default: start a local one for this run)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first malformed line or row, invalid UTF-8 or empty document "
                             "instead of skipping and counting it")
    parser.add_argument("--chunk-chars", type=int, default=None,
                        help="characters of text per unit of work and of resumption (default: 1 Mi)")
    parser.add_argument("--check", action="store_true",
                        help="verify existing shard folders instead: sizes, checksum and token ids")


def _join_command(args: argparse.Namespace) -> list[str]:
    """This same prepare for the job that joins the parts a Slurm array wrote: it finds every part
    finished and only joins them (with the local executor, so that it never submits again)."""
    import sys

    command = [sys.executable, "-m", "xmodel2", "prepare", *[str(Path(p).absolute()) for p in args.inputs],
               "--tokenizer", str(Path(args.tokenizer or "").absolute()), "--out", str(Path(args.out or "").absolute()),
               "--text-field", args.text_field, "--executor", "local", "--workers", "1"]
    return command + (["--strict"] if args.strict else [])


def run(args: argparse.Namespace) -> int:
    from xmodel2.data.executors import SlurmOptions
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
                     tasks=args.tasks, ray_address=args.ray_address, ray_mem_per_cpu_gb=args.mem_per_cpu_gb or 1,
                     slurm=SlurmOptions(args.partition, args.time, args.cpus_per_task, args.mem_per_cpu_gb or 2,
                                        args.slurm_dry_run),
                     join_command=_join_command(args))
    if result.submission is not None:
        job = result.submission
        if job.encode_job is None:
            print(f"wrote {job.encode_script} and {job.join_script}; nothing submitted. Submit with: "
                  f"sbatch {job.encode_script}, then sbatch --dependency=afterok:JOBID {job.join_script}")
        else:
            print(f"submitted Slurm job {job.encode_job} (encoding) and job {job.join_job}, which writes "
                  f"{result.out} once every task has succeeded")
        return 0
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
