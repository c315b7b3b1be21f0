"""`dedup` as datatrove stages keeps exactly what the streaming dedup keeps and reports the same
removals, on the bundled SFT set and on a corpus with planted exact, near and chained duplicates."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from xmodel2.cli import main
from xmodel2.data.corpus import corpus_file
from xmodel2.data.dedup import deduplicate
from xmodel2.data.sft import BUNDLED_DIR, record_messages


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def outputs(path: Path) -> tuple[bytes, bytes]:
    return path.read_bytes(), path.with_name(path.stem + ".removed.jsonl").read_bytes()


def both_ways(inputs: list[str], tmp_path: Path, threshold: int, **stages) -> tuple[object, object]:
    streaming = deduplicate(inputs, tmp_path / "streaming.jsonl", threshold=threshold)
    staged = deduplicate(inputs, tmp_path / "staged.jsonl", threshold=threshold, **stages)
    assert outputs(tmp_path / "staged.jsonl") == outputs(tmp_path / "streaming.jsonl")
    assert not (tmp_path / ".staged.jsonl.dedup").exists()
    return streaming, staged


@pytest.fixture(scope="module")
def sft_texts(tmp_path_factory) -> Path:
    texts = []
    for path in sorted(BUNDLED_DIR.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            texts += ["\n".join(m["content"] for m in record_messages(json.loads(line))) for line in handle]
    return write_jsonl(tmp_path_factory.mktemp("sft") / "sft.jsonl", texts)


@pytest.mark.parametrize("threshold", [8])
def test_bundled_sft_set(sft_texts, tmp_path, threshold):
    streaming, staged = both_ways([str(sft_texts)], tmp_path, threshold, buckets=8, tasks=2, workers=2)
    assert staged.kept == streaming.kept and staged.distances == streaming.distances
    assert streaming.near > 100  # the set has near duplicates to find


def planted_corpus(folder: Path) -> list[str]:
    """Pages, and copies of them: exact (case and punctuation changed), a few words changed, chains
    whose ends are too far apart to match each other, repeated empty documents; over three files."""
    with gzip.open(corpus_file("python-docs"), "rt", encoding="utf-8") as handle:
        pages = [json.loads(line)["text"] for _, line in zip(range(120), handle)]
    rng = random.Random(7)

    def changed(text: str, count: int) -> str:
        words = text.split()
        for index in rng.sample(range(len(words)), min(count, len(words))):
            words[index] = rng.choice(["zebra", "quartz", "lemur"])
        return " ".join(words)

    texts = list(pages)
    for page in pages[:60]:
        kind = rng.randrange(4)
        if kind == 0:
            texts.append(page.upper() + " !!")
        elif kind == 1:
            texts.append(changed(page, 2))
        elif kind == 2:  # a chain: each link near the last, the ends further apart
            link = page
            for _ in range(3):
                link = changed(link, 3)
                texts.append(link)
        else:
            texts += [page, "", ""]
    rng.shuffle(texts)
    parts = [texts[i::3] for i in range(3)]
    return [str(write_jsonl(folder / f"part-{i}.jsonl", part)) for i, part in enumerate(parts)]


@pytest.mark.parametrize("threshold", [3, 6])
def test_planted_duplicates(tmp_path, threshold):
    files = planted_corpus(tmp_path)
    streaming, staged = both_ways(files, tmp_path, threshold, buckets=5, tasks=3, workers=2)
    assert streaming.exact > 20 and streaming.near > 20
    assert (staged.kept, staged.exact, staged.near) == (streaming.kept, streaming.exact, streaming.near)


def test_cli_stages_and_bad_buckets(tmp_path, capsys):
    files = planted_corpus(tmp_path)
    assert main(["dedup", *files, "--out", str(tmp_path / "cli.jsonl"), "--buckets", "4", "--tasks", "2"]) == 0
    deduplicate(files, tmp_path / "streaming.jsonl")
    assert outputs(tmp_path / "cli.jsonl") == outputs(tmp_path / "streaming.jsonl")
    capsys.readouterr()
    assert main(["dedup", *files, "--out", str(tmp_path / "bad.jsonl"), "--buckets", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--buckets" in err


def test_signatures_in_many_batches_in_process(tmp_path, monkeypatch):
    from xmodel2.data import dedup_pipeline

    monkeypatch.setattr(dedup_pipeline, "SIGNATURE_BATCH", 40)  # one datatrove task, run in this process
    files = planted_corpus(tmp_path)
    both_ways(files, tmp_path, 3, buckets=3, tasks=1, workers=1)


def test_bad_record_is_one_line_error_and_leaves_nothing(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", ["one two three", "four five six"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "seven eight"}\nnot json\n')
    code = main(["dedup", str(good), str(bad), "--out", str(tmp_path / "out" / "o.jsonl"), "--buckets", "2",
                 "--tasks", "2", "--workers", "1"])
    err = capsys.readouterr().err
    # datatrove logs its tasks to stderr too; the error itself is one line, the last
    assert code == 2 and err.count("xmodel2: error") == 1
    assert err.strip().splitlines()[-1].startswith(f"xmodel2: error: {bad}:2: invalid JSON")
    assert not any((tmp_path / "out").iterdir())
