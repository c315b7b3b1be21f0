"""`xmodel2 dedup` on real text: exact and near duplicates removed, same-topic documents kept,
deterministic output, bounded memory on a large synthetic input, atomic output, bad input."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from xmodel2.cli import main
from xmodel2.data.corpus import corpus_file
from xmodel2.data.dedup import SimHashIndex, band_masks, deduplicate, exact_key, normalize, simhash


def docs_by_title(part: str) -> dict[str, str]:
    with gzip.open(corpus_file(part), "rt", encoding="utf-8") as handle:
        return {d["title"]: d["text"] for d in map(json.loads, handle)}


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return docs_by_title("python-docs")


def change_words(text: str, count: int, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split()
    for index in rng.sample(range(len(words)), count):
        words[index] = "zebra"
    return " ".join(words)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_bands_cover_64_bits_and_pigeonhole_holds():
    for threshold in (0, 3, 7):
        bands = band_masks(threshold)
        assert len(bands) == threshold + 1
        assert sum(mask.bit_length() for _, mask in bands) == 64
    index = SimHashIndex(threshold=3)
    rng = random.Random(0)
    base = rng.getrandbits(64)
    index.add(base, b"a")
    for flips in range(0, 6):  # any fingerprint within 3 bits is found through some band
        other = base
        for bit in rng.sample(range(64), flips):
            other ^= 1 << bit
        match = index.find(other, b"b")
        assert (match is not None) == (flips <= 3)
        if match:
            assert match.distance == flips and not match.exact


def test_exact_near_and_same_topic_documents(pages, tmp_path):
    gzip_page, lzma_page = pages["library/gzip"], pages["library/lzma"]  # same topic: compression
    grp_page, pwd_page = pages["library/grp"], pages["library/pwd"]  # same topic: user databases
    near = change_words(gzip_page, 3, seed=1)
    records = [
        {"text": gzip_page, "id": "gzip"},
        {"text": lzma_page, "id": "lzma"},
        {"text": "  " + gzip_page.upper() + "\n", "id": "gzip-exact"},  # same text after normalization
        {"text": near, "id": "gzip-near"},
        {"text": grp_page, "id": "grp"},
        {"text": pwd_page, "id": "pwd"},
    ]
    distance = (simhash(normalize(gzip_page)) ^ simhash(normalize(near))).bit_count()
    assert 1 <= distance <= 3, distance
    for a, b in ((gzip_page, lzma_page), (grp_page, pwd_page)):
        assert (simhash(normalize(a)) ^ simhash(normalize(b))).bit_count() > 10

    source = write_jsonl(tmp_path / "docs.jsonl", records)
    result = deduplicate([str(source)], tmp_path / "out.jsonl", threshold=3)
    kept = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert kept == ["gzip", "lzma", "grp", "pwd"]
    assert (result.documents, result.kept, result.exact, result.near) == (6, 4, 1, 1)
    removed = [json.loads(line) for line in (tmp_path / "out.removed.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"], r["duplicate_of"]["line"]) for r in removed] == [(3, "exact", 1), (4, "near", 1)]
    assert removed[1]["distance"] == distance
    # kept records are written back byte for byte (other fields included)
    assert (tmp_path / "out.jsonl").read_text().splitlines()[0] == source.read_text().splitlines()[0]


def test_output_identical_across_runs_and_cli(pages, tmp_path):
    texts = list(pages.values())[:60]
    records = [{"text": t} for t in texts] + [{"text": change_words(t, 2, seed=i)} for i, t in enumerate(texts[:20])]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    assert main(["dedup", str(source), "--out", str(tmp_path / "a.jsonl.gz")]) == 0
    done = subprocess.run([sys.executable, "-m", "xmodel2", "dedup", str(source), "--out", str(tmp_path / "b.jsonl.gz")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "documents: kept" in done.stdout
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    a = (tmp_path / "a.removed.jsonl").read_text().replace("a.removed", "")
    assert a == (tmp_path / "b.removed.jsonl").read_text()
    assert len(a.splitlines()) >= 15  # most 2-word edits of these long pages are caught


def test_text_files_one_document_per_line(tmp_path):
    lines = ["the quick brown fox jumps over the lazy dog near the river bank today",
             "The quick brown fox jumps over the lazy dog near the river bank today!",
             "a completely different sentence about compilers and parsers and grammars"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = deduplicate([str(tmp_path / "in.txt")], tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text().splitlines() == [lines[0], lines[2]]
    assert result.exact == 1


def synthetic_documents(count: int, words: int = 400):
    rng = random.Random(7)
    vocabulary = [f"w{i}" for i in range(5000)]
    for i in range(count):
        if i % 10 == 9:  # every tenth is a near copy of the document before it
            yield json.dumps({"text": previous.replace(previous.split()[5], "changed", 1)}) + "\n"
            continue
        previous = " ".join(rng.choice(vocabulary) for _ in range(words))
        yield json.dumps({"text": previous}) + "\n"


def test_large_input_bounded_memory(tmp_path):
    source = tmp_path / "big.jsonl"
    with open(source, "w", encoding="utf-8") as handle:
        handle.writelines(synthetic_documents(5000))
    size = source.stat().st_size
    tracemalloc.start()
    result = deduplicate([str(source)], tmp_path / "big-out.jsonl")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.documents == 5000 and result.exact == 0
    removed = [json.loads(line) for line in (tmp_path / "big-out.removed.jsonl").read_text().splitlines()]
    # one word changed in 400: most copies fall within 3 bits, and nothing else is removed
    assert result.near == len(removed) >= 300  # of 500 copies
    assert all(r["line"] % 10 == 0 and r["duplicate_of"]["line"] == r["line"] - 1 for r in removed)
    # the index holds a fingerprint, an exact hash and band entries per document, not the texts
    assert peak < size / 4, (peak, size)


def test_bad_input_is_one_line_with_file_and_line_and_leaves_no_output(tmp_path, capsys):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "fine"}\n{"text": 3}\n', encoding="utf-8")
    assert main(["dedup", str(source), "--out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{source}:2:" in err and "'text'" in err
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))
    source.write_text('{"text": "fine"}\nnot json\n', encoding="utf-8")
    assert main(["dedup", str(source), "--out", str(tmp_path / "out.jsonl")]) == 2
    assert f"{source}:2: invalid JSON" in capsys.readouterr().err
    assert main(["dedup", str(source), "--out", str(source)]) == 2
    assert main(["dedup", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2


def test_exact_key_ignores_case_space_and_punctuation():
    assert exact_key(normalize("Hello,  World!")) == exact_key(normalize("hello world"))
    assert exact_key(normalize("hello world")) != exact_key(normalize("hello words"))
