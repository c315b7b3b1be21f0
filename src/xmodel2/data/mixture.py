"""Training mixtures stated in tokens per source, packed into fixed-length sequences in one seeded order.

Packing: a source is its shard's token stream (documents back to back, each ending with EOS),
repeated as often as its token budget needs. Chunk j of a source holds stream tokens
[j·L, j·L + L + 1) for L = seq_len: L inputs plus the next token so that every input has its
target. Consecutive chunks therefore share exactly one token (the last of one is the first of
the next) and each chunk accounts for L tokens of the budget. A source asking for `tokens`
gets floor(tokens / L) chunks, so realized counts are exact up to one chunk per source.

Order: all chunks of all sources form one index space of size N, and sequence i is chunk
perm_e(i mod N) with e = i div N the epoch and perm_e a keyed bijection of [0, N) (a Feistel
network with cycle walking) keyed by (seed, e). Sequence i is thus a pure function of
(sources, seq_len, seed, i): nothing to store, any rank reads any index, and resuming at a
step is free. It also needs no O(N) table, so it holds for billions of chunks.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from xmodel2.data.sft_mask import IGNORE_INDEX
from xmodel2.data.shards import ShardReader
from xmodel2.errors import UserError

HELD_OUT_WORDS = frozenset({"validation", "test"})
_ROUNDS = 4


@dataclass
class SourceSpec:
    """One mixture entry: draw `tokens` tokens from the shard folder at `path`."""

    name: str
    path: str
    tokens: int
    max_repeats: float = 4.0  # refuse budgets above this many passes over the shard
    # Optional per-token flags over the shard (True = a training target); False tokens, e.g. the
    # prompts of SFT conversations when prompt masking is on, get IGNORE_INDEX as targets.
    target_mask: np.ndarray | None = None


def is_held_out(name: str) -> bool:
    """True when a name has 'validation' or 'test' as a word (wiki-test, val/validation.jsonl ...)."""
    return bool(HELD_OUT_WORDS & set(re.split(r"[^a-z0-9]+", name.lower())))


def _refuse_held_out(spec: SourceSpec, reader: ShardReader) -> None:
    names = [spec.name, Path(spec.path).name] + [Path(f["path"]).name for f in reader.meta.get("files", [])]
    held = [n for n in names if is_held_out(n)]
    if held:
        raise UserError(f"mixture source {spec.name!r}: {spec.path} is held-out data ({held[0]}); "
                        f"validation and test sets never enter a training mixture")


def _round_keys(seed: int, epoch: int) -> list[np.uint64]:
    digest = hashlib.sha256(f"xmodel2-mixture/{seed}/{epoch}".encode()).digest()
    return [np.uint64(int.from_bytes(digest[8 * r:8 * r + 8], "little")) for r in range(_ROUNDS)]


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    # splitmix64 finalizer: a cheap, well-spread round function
    z = (x + key) * np.uint64(0x9E3779B97F4A7C15)
    z ^= z >> np.uint64(31)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(29)
    return z


def permute(indices: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """A keyed bijection of [0, n), evaluated only at `indices`."""
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask, shift = np.uint64((1 << half) - 1), np.uint64(half)
    keys = _round_keys(seed, epoch)

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> shift, x & mask
        for key in keys:
            left, right = right, left ^ (_mix(right, key) & mask)
        return (left << shift) | right

    with np.errstate(over="ignore"):
        out = feistel(np.asarray(indices, dtype=np.uint64))
        outside = out >= n
        while outside.any():  # cycle walking: the domain is at most 4n, so this ends fast
            out[outside] = feistel(out[outside])
            outside = out >= n
    return out.astype(np.int64)


def _window(tokens: np.ndarray, start: int, length: int) -> np.ndarray:
    """`length` tokens of the endlessly repeated `tokens`, from `start` (< len(tokens))."""
    end = start + length
    if end <= len(tokens):
        return tokens[start:end]
    return np.concatenate([tokens[start:], tokens[:end - len(tokens)]])


class MixtureDataset:
    """Packed training sequences of a token-budgeted mixture, in a seeded global order."""

    def __init__(self, sources: list[SourceSpec], seq_len: int, seed: int):
        if seq_len < 1:
            raise UserError(f"seq_len must be positive, got {seq_len}")
        if not sources:
            raise UserError("a mixture needs at least one source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise UserError(f"mixture source names repeat: {', '.join(names)}")
        self.sources = list(sources)
        self.seq_len = seq_len
        self.seed = seed
        self.readers = [self._open(spec) for spec in sources]
        fingerprints = {r.meta["tokenizer"]["fingerprint"] for r in self.readers}
        if len(fingerprints) > 1:
            raise UserError("mixture sources were prepared with different tokenizers: "
                            + ", ".join(f"{s.name}={r.meta['tokenizer']['fingerprint'][:12]}"
                                        for s, r in zip(sources, self.readers)))
        self.chunks = np.array([spec.tokens // seq_len for spec in sources], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.chunks)])
        self.total = int(self.starts[-1])

    def _open(self, spec: SourceSpec) -> ShardReader:
        reader = ShardReader(spec.path)
        _refuse_held_out(spec, reader)
        available = reader.num_tokens
        if available <= self.seq_len:
            raise UserError(f"mixture source {spec.name!r}: {spec.path} has {available} tokens, "
                            f"fewer than one sequence of {self.seq_len + 1}")
        if spec.tokens < self.seq_len:
            raise UserError(f"mixture source {spec.name!r}: {spec.tokens} tokens is less than one "
                            f"sequence of {self.seq_len}")
        if spec.tokens > spec.max_repeats * available:
            raise UserError(f"mixture source {spec.name!r}: {spec.tokens:,} tokens would repeat {spec.path} "
                            f"({available:,} tokens) {spec.tokens / available:.2f} times, more than "
                            f"max_repeats={spec.max_repeats:g}")
        return reader

    def __len__(self) -> int:
        return self.total

    def locate(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(source number, chunk number within that source) of each global sequence index."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if index.size and index.min() < 0:
            raise IndexError(f"negative sequence index {int(index.min())}")
        epoch, position = np.divmod(index, self.total)
        chunk = np.empty_like(position)
        for e in np.unique(epoch):
            where = epoch == e
            chunk[where] = permute(position[where], self.total, self.seed, int(e))
        source = np.searchsorted(self.starts, chunk, side="right") - 1
        return source, chunk - self.starts[source]

    def sequences(self, indices: Sequence[int]) -> torch.Tensor:
        """Int64 tensor (len(indices), seq_len + 1): inputs are [:, :-1], targets [:, 1:]."""
        length = self.seq_len + 1
        sources, chunks = self.locate(indices)
        out = np.empty((len(sources), length), dtype=np.int64)
        for row, (s, j) in enumerate(zip(sources.tolist(), chunks.tolist())):
            tokens = self.readers[s].tokens
            out[row] = _window(tokens, (j * self.seq_len) % len(tokens), length)
        for s in np.unique(sources):
            self.readers[s].check_ids(out[sources == s])
        return torch.from_numpy(out)

    def training_pair(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (len(indices), seq_len); masked targets are IGNORE_INDEX."""
        block = self.sequences(indices)
        inputs, targets = block[:, :-1], block[:, 1:].clone()
        if any(spec.target_mask is not None for spec in self.sources):
            sources, chunks = self.locate(indices)
            for row, (s, j) in enumerate(zip(sources.tolist(), chunks.tolist())):
                mask = self.sources[s].target_mask
                if mask is not None:
                    window = _window(mask, (j * self.seq_len) % len(mask), self.seq_len + 1)
                    targets[row, torch.from_numpy(~window[1:])] = IGNORE_INDEX
        return inputs, targets

    def realized_tokens(self) -> dict[str, int]:
        """Tokens (training targets) per source in one pass over the order: chunks × seq_len."""
        return {spec.name: int(n) * self.seq_len for spec, n in zip(self.sources, self.chunks)}

    def describe(self) -> str:
        realized = self.realized_tokens()
        total = sum(realized.values())
        rows = [f"{'source':<20} {'shard tokens':>14} {'requested':>14} {'realized':>14} {'share':>7} {'passes':>7}"]
        for spec, reader in zip(self.sources, self.readers):
            got = realized[spec.name]
            rows.append(f"{spec.name:<20} {reader.num_tokens:>14,} {spec.tokens:>14,} {got:>14,} "
                        f"{got / total:>6.1%} {got / reader.num_tokens:>7.2f}")
        rows.append(f"{'total':<20} {'':>14} {sum(s.tokens for s in self.sources):>14,} {total:>14,} "
                    f"{'100.0%':>7} {'':>7}   ({self.total:,} sequences of {self.seq_len + 1})")
        return "\n".join(rows)


class SequentialDataset:
    """Held-out evaluation: consecutive packed sequences of one shard, from its start, no shuffling."""

    def __init__(self, path: str, seq_len: int, max_sequences: int | None = None):
        if seq_len < 1:
            raise UserError(f"seq_len must be positive, got {seq_len}")
        self.reader = ShardReader(path)
        self.seq_len = seq_len
        count = (self.reader.num_tokens - 1) // seq_len
        if count == 0:
            raise UserError(f"{path}: {self.reader.num_tokens} tokens, fewer than one sequence of {seq_len + 1}")
        self.count = count if max_sequences is None else min(count, max_sequences)

    def __len__(self) -> int:
        return self.count

    def sequences(self, indices: Sequence[int]) -> torch.Tensor:
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= self.count):
            raise IndexError(f"sequence index out of range [0, {self.count})")
        length = self.seq_len + 1
        out = np.empty((len(index), length), dtype=np.int64)
        tokens = self.reader.tokens
        for row, i in enumerate(index.tolist()):
            out[row] = tokens[i * self.seq_len:i * self.seq_len + length]
        self.reader.check_ids(out)
        return torch.from_numpy(out)

    def blocks(self, batch_size: int) -> list[torch.Tensor]:
        """All the sequences, in order, as (batch_size, seq_len + 1) blocks (the last may be smaller)."""
        return [self.sequences(range(i, min(self.count, i + batch_size)))
                for i in range(0, self.count, batch_size)]


def held_out_blocks(path: str | Path, seq_len: int, max_sequences: int, batch_size: int) -> list[torch.Tensor]:
    """The first `max_sequences` packed sequences of a held-out shard, in scoring blocks: what
    every validation loss and held-out perplexity of xmodel2 is computed on."""
    return SequentialDataset(str(path), seq_len, max_sequences=max_sequences).blocks(batch_size)
