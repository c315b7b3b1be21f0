"""`dedup` as four datatrove stages whose memory is bounded by one bucket, not by the corpus.

1. Signatures (datatrove tasks share the input files): each document's SimHash and exact hash,
   written, a batch of documents at a time, once per band as (band, band value, document id, fingerprint, exact hash)
   to the bucket file that the band value hashes to. A document id is (input file index, ordinal
   in the file) packed into 64 bits, so ids sort in input order.
2. Pairs (tasks share the buckets): a bucket is loaded alone and sorted by (band, band value,
   id). Documents with the same exact hash have the same fingerprint, so a whole exact group sits
   in one band group: the first of the group stands for it (later members get an "exact" pair to
   it), and only these firsts are compared pairwise within a band group, within the threshold.
3. Decisions (one task): the pairs are read and each document that has any is decided in input
   order, as the streaming dedup decides. A first of an exact group is dropped if a pair links
   it to an earlier kept document (it duplicates the closest, then earliest). A later member
   is dropped as an exact duplicate when the first of its group was kept; otherwise the first
   was dropped because it matched a kept earlier document, the member has the same fingerprint,
   so it matches that one too and is dropped as a near duplicate of the closest, earliest kept
   document linked to the first of its group that comes before it. Only documents that appear
   in some pair are held, with their decisions.
4. Filter (one task): the inputs are streamed again, undecided documents written unchanged, and
   each removal reported as the streaming dedup reports it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from xmodel2.data.dedup import (DedupResult, _AtomicFile, band_masks, exact_key, normalize, read_documents,
                                simhash)
from xmodel2.data.pipeline import run_local
from xmodel2.errors import UserError
from xmodel2.fileio import atomic_write_text

SIGNATURE = np.dtype([("band", "<u1"), ("value", "<u8"), ("doc", "<u8"), ("fingerprint", "<u8"),
                      ("key", "V16")])
PAIR = np.dtype([("doc", "<u8"), ("other", "<u8"), ("distance", "<u1"), ("exact", "<u1")])
ORDINAL_BITS = 40  # documents per input file: up to 2**40
SIGNATURE_BATCH = 1 << 16  # signature records a task holds before writing them to the buckets


def doc_id(file_index: int, ordinal: int) -> int:
    return (file_index << ORDINAL_BITS) | ordinal


def bucket_of(band: np.ndarray | int, value: np.ndarray | int, buckets: int):
    # a multiplicative mix so that small band values still spread over the buckets
    mixed = (np.asarray(value, np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.asarray(band, np.uint64)
    return (mixed >> np.uint64(17)) % np.uint64(buckets)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)


class Signatures:
    """Stage 1: task t writes, for its input files, one file per bucket under `work`/signatures."""

    def __init__(self, files: list[str], field_name: str, threshold: int, shingle: int, buckets: int, work: str):
        self.files, self.field_name, self.threshold = files, field_name, threshold
        self.shingle, self.buckets, self.work = shingle, buckets, work

    def __repr__(self) -> str:
        return f"xmodel2 dedup signatures: {len(self.files)} files -> {self.buckets} buckets"

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        try:
            self.sign(rank, world_size)
        except UserError as error:  # a bad record: handed to the main process, which reports it in one line
            atomic_write_text(Path(self.work) / "errors" / f"task-{rank:05d}.txt", str(error))
        return data

    def sign(self, rank: int, world_size: int) -> None:
        bands = band_masks(self.threshold)
        for file_index in range(rank, len(self.files), world_size):
            rows, batch = [], 0
            for ordinal, doc in enumerate(read_documents([Path(self.files[file_index])], self.field_name)):
                normalized = normalize(doc.text)
                fingerprint = simhash(normalized, self.shingle)
                key = exact_key(normalized)
                ident = doc_id(file_index, ordinal)
                rows.extend((band, (fingerprint >> shift) & mask, ident, fingerprint, key)
                            for band, (shift, mask) in enumerate(bands))
                if len(rows) >= SIGNATURE_BATCH:
                    self.write(rows, file_index, batch)
                    rows, batch = [], batch + 1
            self.write(rows, file_index, batch)

    def write(self, rows: list[tuple], file_index: int, batch: int) -> None:
        records = np.array(rows, dtype=SIGNATURE)
        which = bucket_of(records["band"], records["value"], self.buckets)
        for bucket in range(self.buckets):
            _save(Path(self.work) / "signatures" / f"bucket-{bucket:05d}" / f"file-{file_index:08d}-{batch:06d}.npy",
                  records[which == bucket])


class Pairs:
    """Stage 2: task t finds the duplicate pairs of buckets t, t+N, ..., one bucket in memory."""

    def __init__(self, threshold: int, buckets: int, work: str):
        self.threshold, self.buckets, self.work = threshold, buckets, work

    def __repr__(self) -> str:
        return f"xmodel2 dedup pairs: {self.buckets} buckets"

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        for bucket in range(rank, self.buckets, world_size):
            folder = Path(self.work) / "signatures" / f"bucket-{bucket:05d}"
            records = np.concatenate([np.load(path) for path in sorted(folder.glob("file-*.npy"))])
            _save(Path(self.work) / "pairs" / f"bucket-{bucket:05d}.npy", bucket_pairs(records, self.threshold))
        return data


def bucket_pairs(records: np.ndarray, threshold: int) -> np.ndarray:
    """The duplicate pairs of one bucket: (member, first of its exact group, 0, 1) for each later
    member of an exact group, and (later, earlier, distance, 0) for firsts of exact groups that
    share a band value within `threshold` bits."""
    key = np.frombuffer(records["key"].tobytes(), "<u8").reshape(-1, 2)
    order = np.lexsort((records["doc"], key[:, 1], key[:, 0], records["value"], records["band"]))
    records, key = records[order], key[order]
    same_value = np.r_[False, (records["band"][1:] == records["band"][:-1])
                       & (records["value"][1:] == records["value"][:-1])]
    same_key = same_value & np.r_[False, (key[1:] == key[:-1]).all(axis=1)]
    # within a run of one exact hash the earliest document comes first: it stands for the run
    first_row = np.maximum.accumulate(np.where(same_key, 0, np.arange(len(records))))
    members = same_key & (records["band"] == 0)  # one exact pair per member, not one per band
    exact = np.empty(int(members.sum()), PAIR)
    exact["doc"], exact["other"] = records["doc"][members], records["doc"][first_row[members]]
    exact["distance"], exact["exact"] = 0, 1

    firsts = records[~same_key]
    firsts = firsts[np.lexsort((firsts["doc"], firsts["value"], firsts["band"]))]
    group = np.cumsum(np.r_[True, (firsts["band"][1:] != firsts["band"][:-1])
                            | (firsts["value"][1:] != firsts["value"][:-1])])
    near = []
    offset = 1
    while offset < len(firsts) and (group[offset:] == group[:-offset]).any():  # every pair of a band group
        together = np.flatnonzero(group[offset:] == group[:-offset])
        distance = np.bitwise_count(firsts["fingerprint"][together] ^ firsts["fingerprint"][together + offset])
        close = distance <= threshold
        found = np.empty(int(close.sum()), PAIR)
        found["doc"] = firsts["doc"][together[close] + offset]
        found["other"] = firsts["doc"][together[close]]
        found["distance"], found["exact"] = distance[close], 0
        near.append(found)
        offset += 1
    return np.concatenate([exact, *near])


class Decisions:
    """Stage 3: one task decides every document that has a pair, in input order."""

    def __init__(self, buckets: int, work: str):
        self.buckets, self.work = buckets, work

    def __repr__(self) -> str:
        return "xmodel2 dedup decisions"

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        pairs = np.unique(np.concatenate([np.load(Path(self.work) / "pairs" / f"bucket-{b:05d}.npy")
                                          for b in range(self.buckets)]))
        _save(Path(self.work) / "removed.npy", decide(pairs))
        return data


def decide(pairs: np.ndarray) -> np.ndarray:
    """Removed documents as PAIR rows (doc, the kept document it duplicates, distance, exact)."""
    first_of: dict[int, int] = {}
    neighbours: dict[int, list[tuple[int, int]]] = {}  # first of a group -> (distance, other first)
    for doc, other, distance, exact in pairs.tolist():
        if exact:
            first_of[doc] = other
        else:
            neighbours.setdefault(doc, []).append((distance, other))
            neighbours.setdefault(other, []).append((distance, doc))
    kept: set[int] = set()
    removed = []
    for doc in sorted(first_of.keys() | set(first_of.values()) | neighbours.keys()):
        first = first_of.get(doc, doc)
        if first != doc and first in kept:
            removed.append((doc, first, 0, 1))
            continue
        earlier = [(d, other) for d, other in neighbours.get(first, ()) if other < doc and other in kept]
        if earlier:
            distance, original = min(earlier)
            removed.append((doc, original, distance, 0))
        else:
            kept.add(doc)
    return np.array(removed, dtype=PAIR)


def filter_documents(files: list[Path], field_name: str, removed: np.ndarray, output: Path, report: Path,
                     result: DedupResult) -> None:
    """Stage 4: the inputs again, the removed documents left out and reported."""
    removals = {int(r["doc"]): r for r in removed}
    originals = {int(r["other"]) for r in removed}
    where: dict[int, dict] = {}  # location of each kept document that something duplicated
    out = _AtomicFile(output, output.suffix == ".gz")
    listing = _AtomicFile(report, False)
    try:
        for file_index, path in enumerate(files):
            for ordinal, doc in enumerate(read_documents([path], field_name)):
                ident = doc_id(file_index, ordinal)
                result.documents += 1
                removal = removals.get(ident)
                if removal is None:
                    if ident in originals:
                        where[ident] = {"file": doc.file, "line": doc.line}
                    out.write(doc.raw)
                    result.kept += 1
                    continue
                exact, distance = bool(removal["exact"]), int(removal["distance"])
                if exact:
                    result.exact += 1
                else:
                    result.near += 1
                    result.distances[distance] = result.distances.get(distance, 0) + 1
                listing.write((json.dumps({
                    "file": doc.file, "line": doc.line, "reason": "exact" if exact else "near",
                    "distance": distance, "duplicate_of": where[int(removal["other"])],
                    "preview": doc.text[:80]}, ensure_ascii=False) + "\n").encode("utf-8"))
        out.commit()
        listing.commit()
    except BaseException:
        out.discard()
        listing.discard()
        raise


def deduplicate_in_stages(files: list[Path], output: Path, report: Path, threshold: int, field_name: str,
                          shingle: int, buckets: int, tasks: int, workers: int) -> DedupResult:
    """Stages 1-3 as datatrove tasks in a work folder beside `output`, then stage 4 here."""
    work = output.parent / f".{output.name}.dedup"
    shutil.rmtree(work, ignore_errors=True)
    (work / "errors").mkdir(parents=True)
    try:
        names = [str(path) for path in files]
        run_local(Signatures(names, field_name, threshold, shingle, buckets, str(work)), min(tasks, len(files)),
                  workers, work / "logs" / "signatures")
        errors = sorted((work / "errors").glob("task-*.txt"))
        if errors:
            raise UserError(errors[0].read_text())
        run_local(Pairs(threshold, buckets, str(work)), min(tasks, buckets), workers, work / "logs" / "pairs")
        run_local(Decisions(buckets, str(work)), 1, 1, work / "logs" / "decisions")
        result = DedupResult(output=output, report=report)
        filter_documents(files, field_name, np.load(work / "removed.npy"), output, report, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result
