"""`xmodel2 dedup`: remove exact and near-duplicate documents (SimHash) from JSONL or text files."""

from __future__ import annotations

import argparse

HELP = """Remove exact and near-duplicate documents from JSONL or text files, in one streaming pass.

Documents are JSONL records (the text in --field; kept records are written back unchanged) or,
for other files, single lines. Exact duplicates are found by a hash of the normalized text
(NFKC, lower case, words only); near duplicates by 64-bit SimHash fingerprints of word shingles
within --threshold differing bits, looked up in threshold+1 band tables (no pairwise pass). The
first document of each group is kept. OUTPUT (.gz to compress) and OUTPUT's
<stem>.removed.jsonl (each removal: file, line, reason, distance, the kept document it
duplicates) appear only when complete. The default threshold 3 with 3-word shingles catches a
few changed words in documents of several hundred words; raise it for short texts (e.g. 8 for
single questions), at the cost of more candidate comparisons.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (JSONL, text, .gz)")
    parser.add_argument("--out", required=True, metavar="OUTPUT", help="deduplicated output file")
    parser.add_argument("--threshold", type=int, default=3, help="max Hamming distance of near duplicates")
    parser.add_argument("--field", default="text", help="JSONL field holding the text")
    parser.add_argument("--shingle", type=int, default=3, help="words per shingle")
    parser.add_argument("--buckets", type=int, default=None,
                        help="run as datatrove stages (signatures to this many band buckets, duplicate pairs "
                             "per bucket, decisions in input order, filter), holding one bucket at a time "
                             "instead of the whole index; same output and report")
    parser.add_argument("--tasks", type=int, default=2, help="datatrove tasks per stage (with --buckets)")
    parser.add_argument("--workers", type=int, default=2, help="local processes (with --buckets)")


def run(args: argparse.Namespace) -> int:
    from xmodel2.data.dedup import deduplicate

    result = deduplicate(args.inputs, args.out, threshold=args.threshold, field_name=args.field,
                         shingle=args.shingle, buckets=args.buckets, tasks=args.tasks, workers=args.workers)
    print(result.summary())
    if result.distances:
        print("near duplicates by distance: " + ", ".join(f"{d}: {n}" for d, n in sorted(result.distances.items())))
    return 0
