"""Mixtures and loaders: exact token proportions, deterministic seeded order, wrap-around, refusals."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from xmodel2.data import MixtureDataset, SequentialDataset, ShardReader, SourceSpec, corpus_file
from xmodel2.data.corpus import CORPUS_DIR
from xmodel2.data.mixture import permute
from xmodel2.data.prepare import prepare
from xmodel2.errors import UserError
from xmodel2.tokenizer.train import MIN_LEARNED_PIECES, RESERVED_PIECES, train_tokenizer

SEQ = 64


def slice_jsonl(part: str, out: Path, limit: int) -> Path:
    with gzip.open(corpus_file(part), "rt", encoding="utf-8") as handle:
        out.write_text("".join(line for _, line in zip(range(limit), handle)), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mix")
    tokenizer = root / "tok"
    train_tokenizer([corpus_file("math")], tokenizer, vocab_size=RESERVED_PIECES + MIN_LEARNED_PIECES + 200,
                    max_sentences=20_000)
    out = {}
    for name, part, limit in [("wiki", "wiki-train", 150), ("math", "math", 60), ("code", "python-code", 2),
                              ("wiki-validation", "wiki-validation", 40)]:
        source = slice_jsonl(part, root / f"{name}.jsonl", limit)
        out[name] = root / name
        prepare([str(source)], str(tokenizer), out[name], workers=1, progress=False)
    return out


def specs(shards, wiki=20_000, math=5_000, code=3_000) -> list[SourceSpec]:
    return [SourceSpec("wiki", str(shards["wiki"]), wiki), SourceSpec("math", str(shards["math"]), math),
            SourceSpec("code", str(shards["code"]), code)]


def test_proportions_exact_in_tokens(shards):
    mix = MixtureDataset(specs(shards), SEQ, seed=0)
    realized = mix.realized_tokens()
    for spec in specs(shards):
        assert realized[spec.name] == spec.tokens // SEQ * SEQ
        assert 0 <= spec.tokens - realized[spec.name] < SEQ
    # the order really holds that many sequences of each source
    sources, _ = mix.locate(range(len(mix)))
    assert Counter(sources.tolist()) == {0: 20_000 // SEQ, 1: 5_000 // SEQ, 2: 3_000 // SEQ}
    table = mix.describe()
    assert "wiki" in table and "19,968" in table and "realized" in table


def test_order_is_a_permutation_of_all_chunks(shards):
    mix = MixtureDataset(specs(shards), SEQ, seed=3)
    sources, chunks = mix.locate(range(len(mix)))
    pairs = set(zip(sources.tolist(), chunks.tolist()))
    assert len(pairs) == len(mix)
    assert pairs == {(s, j) for s, n in enumerate(mix.chunks.tolist()) for j in range(n)}
    # shuffled, not source after source
    assert sources[: len(mix) // 2].tolist() != sorted(sources[: len(mix) // 2].tolist())


def test_sequences_are_the_packed_stream(shards):
    """Chunk j of a source is stream tokens [j*L, j*L + L + 1) of the shard repeated end to end."""
    mix = MixtureDataset(specs(shards, code=3 * ShardReader(shards["code"]).num_tokens), SEQ, seed=1)
    batch = mix.sequences(range(len(mix))).numpy()
    sources, chunks = mix.locate(range(len(mix)))
    for s, reader in enumerate(mix.readers):
        stream = np.tile(np.asarray(reader.tokens, dtype=np.int64), 4)
        for row in np.flatnonzero(sources == s):
            j = int(chunks[row])
            assert batch[row].tolist() == stream[j * SEQ:j * SEQ + SEQ + 1].tolist()


def test_same_seed_same_sequences_other_seed_differs(shards):
    a = MixtureDataset(specs(shards), SEQ, seed=7)
    b = MixtureDataset(specs(shards), SEQ, seed=7)
    c = MixtureDataset(specs(shards), SEQ, seed=8)
    index = [0, 5, 17, len(a) - 1, 3, 5]
    assert a.sequences(index).equal(b.sequences(index))
    assert not a.sequences(range(32)).equal(c.sequences(range(32)))
    # a pure function of the index: asking in another batch gives the same rows
    assert a.sequences([17]).equal(b.sequences(range(18))[17:18])


def test_wrap_around_starts_a_new_epoch(shards):
    mix = MixtureDataset(specs(shards), SEQ, seed=0)
    n = len(mix)
    first = mix.sequences(range(n))
    second = mix.sequences(range(n, 2 * n))
    assert not first.equal(second)  # another permutation ...
    key = lambda rows: sorted(hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in rows)  # noqa: E731
    assert key(first) == key(second)  # ... of the same chunks
    assert mix.sequences([n + 4]).equal(mix.sequences([n + 4]))
    with pytest.raises(IndexError):
        mix.sequences([-1])


def test_permutation_is_a_bijection():
    for n in (1, 2, 3, 1000, 4097):
        assert sorted(permute(np.arange(n), n, seed=5, epoch=0).tolist()) == list(range(n))


def test_max_repeats(shards):
    available = ShardReader(shards["math"]).num_tokens
    MixtureDataset([SourceSpec("math", str(shards["math"]), 4 * available)], SEQ, 0)
    with pytest.raises(UserError, match=r"'math'.*max_repeats=4"):
        MixtureDataset([SourceSpec("math", str(shards["math"]), 4 * available + SEQ)], SEQ, 0)
    with pytest.raises(UserError, match="max_repeats=1"):
        MixtureDataset([SourceSpec("math", str(shards["math"]), available + 1, max_repeats=1)], SEQ, 0)


def test_held_out_sources_refused(shards, tmp_path):
    with pytest.raises(UserError, match="never enter a training mixture"):
        MixtureDataset([SourceSpec("wiki-validation", str(shards["wiki-validation"]), 1000)], SEQ, 0)
    # renaming the source or copying the shard does not hide where its text came from
    renamed = tmp_path / "innocent"
    renamed.mkdir()
    for f in shards["wiki-validation"].iterdir():
        (renamed / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError, match="held-out"):
        MixtureDataset([SourceSpec("extra", str(renamed), 1000)], SEQ, 0)


def test_sequential_dataset(shards):
    data = SequentialDataset(str(shards["wiki-validation"]), SEQ)
    tokens = np.asarray(ShardReader(shards["wiki-validation"]).tokens, dtype=np.int64)
    assert len(data) == (len(tokens) - 1) // SEQ
    batch = data.sequences([0, 1, len(data) - 1]).numpy()
    assert batch[0].tolist() == tokens[:SEQ + 1].tolist()
    assert batch[1][0] == batch[0][-1]  # consecutive sequences overlap by the one target token
    assert len(SequentialDataset(str(shards["wiki-validation"]), SEQ, max_sequences=3)) == 3
    with pytest.raises(IndexError):
        data.sequences([len(data)])


def test_sequences_are_fast(shards):
    mix = MixtureDataset(specs(shards, wiki=40_000), 512, seed=0)
    mix.sequences(range(64))
    start = time.perf_counter()
    for step in range(20):
        mix.sequences(range(step * 64, step * 64 + 64))
    per_sequence = (time.perf_counter() - start) / (20 * 64)
    assert per_sequence < 1e-3, f"{per_sequence * 1e6:.0f} µs per sequence"


def test_bundled_corpus_split_rule():
    """The Wikipedia split follows sha256(title) mod 100 and the held-out parts share no title."""
    def titles(part: str) -> list[str]:
        with gzip.open(corpus_file(part), "rt", encoding="utf-8") as handle:
            return [json.loads(line)["title"] for line in handle]

    bucket = lambda t: int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big") % 100  # noqa: E731
    train, val, test = titles("wiki-train"), titles("wiki-validation"), titles("wiki-test")
    assert all(bucket(t) < 5 for t in test) and all(5 <= bucket(t) < 10 for t in val)
    assert all(bucket(t) >= 10 for t in train)
    assert not set(train) & (set(val) | set(test)) and len(train) > 10 * len(val) > 0
    assert sum(p.stat().st_size for p in CORPUS_DIR.glob("*.jsonl.gz")) < 8 * 2**20
