"""`xmodel2 prepare` and token shards: round trip, idempotence, resume after SIGKILL, bad input."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from xmodel2.cli import main
from xmodel2.data import ShardReader, corpus_file
from xmodel2.data.prepare import prepare, staging_dir
from xmodel2.errors import UserError
from xmodel2.tokenizer import load_tokenizer
from xmodel2.tokenizer.train import MIN_LEARNED_PIECES, RESERVED_PIECES, train_tokenizer

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "xmodel2-tokenizer"
SHARD_FILES = ("tokens.bin", "documents.npy", "meta.json")


def read_docs(path: Path, limit: int | None = None) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for _, line in zip(range(limit or 10**9), handle)]


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory) -> Path:
    """A Unigram tokenizer trained here (SentencePieceTrainer) on a slice of the bundled corpus."""
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer([corpus_file("math")], out, vocab_size=RESERVED_PIECES + MIN_LEARNED_PIECES + 200,
                    max_sentences=20_000)
    return out


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in SHARD_FILES}


def check_round_trip(tokenizer_path: Path, docs: list[str], shard: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_path)
    reader = ShardReader(shard)
    reader.verify()
    assert len(reader) == len(docs)
    assert reader.num_tokens == sum(len(reader.document(i)) for i in range(len(docs)))
    for i, text in enumerate(docs):
        ids = reader.document(i)
        assert ids[-1] == tokenizer.eos_id
        assert ids[:-1].tolist() == tokenizer.encode(text)
        assert tokenizer.decode(ids[:-1].tolist()) == text


def test_round_trip_with_trained_tokenizer(small_tokenizer, tmp_path):
    docs = read_docs(corpus_file("math"), 120)
    source = write_jsonl(tmp_path / "math.jsonl", docs)
    result = prepare([str(source)], str(small_tokenizer), tmp_path / "shard", workers=2, chunk_chars=20_000,
                     progress=False)
    assert result.encoded_chunks > 1  # several chunks went through the worker pool
    check_round_trip(small_tokenizer, docs, tmp_path / "shard")
    meta = result.meta
    assert meta["dtype"] == "uint16" and meta["documents"] == len(docs)
    assert meta["files"][0]["documents"] == len(docs) and meta["files"][0]["tokens"] == meta["tokens"]
    assert not staging_dir(tmp_path / "shard").exists()


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference tokenizer not found at {REFERENCE}")
def test_round_trip_with_released_tokenizer(tmp_path):
    docs = read_docs(corpus_file("wiki-validation"), 200) + read_docs(corpus_file("python-code"), 5)
    source = write_jsonl(tmp_path / "mixed.jsonl", docs)
    prepare([str(source)], str(REFERENCE), tmp_path / "shard", workers=2, chunk_chars=50_000, progress=False)
    check_round_trip(REFERENCE, docs, tmp_path / "shard")


def test_folder_of_text_and_jsonl(small_tokenizer, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("First document.\nTwo lines.", encoding="utf-8")
    write_jsonl(folder / "b.jsonl", ["second", "third"])
    (folder / ".hidden.txt").write_text("ignored", encoding="utf-8")
    meta = prepare([str(folder)], str(small_tokenizer), tmp_path / "shard", workers=1, progress=False).meta
    assert [f["path"] for f in meta["files"]] == [str(folder / "a.txt"), str(folder / "b.jsonl")]
    check_round_trip(small_tokenizer, ["First document.\nTwo lines.", "second", "third"], tmp_path / "shard")


def test_prepare_is_idempotent(small_tokenizer, tmp_path, capsys):
    source = write_jsonl(tmp_path / "d.jsonl", read_docs(corpus_file("math"), 50))
    args = ["prepare", str(source), "--tokenizer", str(small_tokenizer), "--out", str(tmp_path / "shard")]
    assert main(args) == 0
    before = shard_bytes(tmp_path / "shard")
    mtimes = [(tmp_path / "shard" / n).stat().st_mtime_ns for n in SHARD_FILES]
    capsys.readouterr()
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert [(tmp_path / "shard" / n).stat().st_mtime_ns for n in SHARD_FILES] == mtimes
    # changed input: rebuilt, not reported as up to date
    write_jsonl(source, read_docs(corpus_file("math"), 51))
    assert main(args) == 0
    assert "up to date" not in capsys.readouterr().out
    assert shard_bytes(tmp_path / "shard") != before


def test_sigkill_then_rerun_is_byte_identical(small_tokenizer, tmp_path):
    source = corpus_file("python-docs")
    reference = tmp_path / "uninterrupted"
    prepare([str(source)], str(small_tokenizer), reference, workers=1, chunk_chars=40_000, progress=False)

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "xmodel2", "prepare", str(source), "--tokenizer", str(small_tokenizer),
           "--out", str(out), "--workers", "2", "--chunk-chars", "40000"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    staging = staging_dir(out)
    deadline = time.monotonic() + 60
    while len(list(staging.glob("part-*.bin"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its worker processes
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "prepare finished before it could be killed"
    assert not out.exists() and staging.is_dir()

    result = prepare([str(source)], str(small_tokenizer), out, workers=2, chunk_chars=40_000, progress=False)
    assert result.reused_chunks >= 3 and result.encoded_chunks > 0
    assert shard_bytes(out) == shard_bytes(reference)
    assert not staging.exists()


def test_bad_lines_are_counted(small_tokenizer, tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    data.write_bytes(b'{"text": "good one"}\n'
                     b'{"text": "broken\n'                      # malformed JSON
                     b'{"body": "wrong field"}\n'               # malformed: no "text"
                     b'{"text": "bad \xff byte"}\n'             # invalid UTF-8
                     b'{"text": "   "}\n'                       # empty document
                     b'\n'                                      # blank line: empty
                     b'{"text": "good two"}\n')
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9\n")            # Latin-1, not UTF-8
    args = ["prepare", str(data), str(tmp_path / "bad.txt"), "--tokenizer", str(small_tokenizer),
            "--out", str(tmp_path / "shard")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"{data}: skipped 2 malformed lines, 1 invalid UTF-8, 2 empty documents" in out
    meta = json.loads((tmp_path / "shard" / "meta.json").read_text())
    first, second = meta["files"]
    assert (first["documents"], first["malformed_lines"], first["invalid_utf8"], first["empty_documents"]) == (2, 2, 1, 2)
    assert (second["documents"], second["invalid_utf8"]) == (0, 1)
    assert meta["skipped"] == {"malformed_lines": 2, "invalid_utf8": 2, "empty_documents": 2}
    check_round_trip(small_tokenizer, ["good one", "good two"], tmp_path / "shard")


def test_strict_names_file_and_line(small_tokenizer, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ["fine"] * 3)
    with open(data, "ab") as handle:
        handle.write(b'{"text": "bad \xff"}\n')
    out = tmp_path / "shard"
    code = main(["prepare", str(data), "--tokenizer", str(small_tokenizer), "--out", str(out), "--strict"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"xmodel2: error: {data}:4: invalid UTF-8") and err.count("\n") == 1
    assert not out.exists() and not staging_dir(out).exists()


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_missing_and_empty_inputs(small_tokenizer, tmp_path, capsys, case):
    data = tmp_path / "nothing.jsonl"
    if case == "empty":
        write_jsonl(data, ["", "  \n"])
    out = tmp_path / "shard"
    code = main(["prepare", str(data), "--tokenizer", str(small_tokenizer), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(data) in err
    assert ("not found" if case == "missing" else "no documents") in err
    assert not out.exists() and not staging_dir(out).exists()


@pytest.fixture
def shard(small_tokenizer, tmp_path) -> Path:
    source = write_jsonl(tmp_path / "d.jsonl", read_docs(corpus_file("math"), 20))
    prepare([str(source)], str(small_tokenizer), tmp_path / "shard", workers=1, progress=False)
    return tmp_path / "shard"


def test_check_accepts_a_good_shard(shard, capsys):
    assert main(["prepare", "--check", str(shard)]) == 0
    assert f"{shard}: ok" in capsys.readouterr().out


def test_truncated_shard(shard, capsys):
    tokens = shard / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(UserError, match="truncated"):
        ShardReader(shard)
    assert main(["prepare", "--check", str(shard)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tokens) in err and "truncated" in err


def test_token_id_beyond_vocabulary(shard, capsys):
    tokens = shard / "tokens.bin"
    data = np.fromfile(tokens, dtype="<u2")
    vocab = json.loads((shard / "meta.json").read_text())["tokenizer"]["vocab_size"]
    data[5] = vocab  # one id past the end, same byte size
    data.tofile(tokens)
    assert main(["prepare", "--check", str(shard)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(shard) in err and f"token id {vocab}" in err


def test_wrong_dtype_in_meta(shard):
    meta = json.loads((shard / "meta.json").read_text())
    meta["dtype"] = "uint32"
    (shard / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="does not match vocabulary size"):
        ShardReader(shard)


@pytest.fixture(scope="module")
def five_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("five")
    docs = read_docs(corpus_file("math"), 100)
    for i in range(5):
        write_jsonl(folder / f"{i}.jsonl", docs[i * 20:(i + 1) * 20])
    return folder


def test_datatrove_shards_are_identical_for_any_task_count(small_tokenizer, five_files, tmp_path):
    pool = prepare([str(five_files)], str(small_tokenizer), tmp_path / "pool", workers=1, progress=False)
    for tasks in (1, 4):
        out = tmp_path / f"tasks-{tasks}"
        result = prepare([str(five_files)], str(small_tokenizer), out, workers=2, executor="local", tasks=tasks,
                         progress=False)
        assert result.encoded_chunks == 5 and not staging_dir(out).exists()
        assert shard_bytes(out) == shard_bytes(tmp_path / "pool")  # meta.json included
    assert pool.meta["documents"] == 100


def test_datatrove_resume_skips_finished_files_and_redoes_changed_ones(small_tokenizer, five_files, tmp_path):
    from xmodel2.data.pipeline import EncodeFiles, part_path

    reference = tmp_path / "reference"
    prepare([str(five_files)], str(small_tokenizer), reference, workers=1, progress=False)
    out = tmp_path / "resumed"
    first = prepare([str(five_files)], str(small_tokenizer), out, workers=1, executor="local", progress=False)
    # an interrupted run: only task 0 of 5 finished; task 1's part belongs to an older version of its file
    staging = staging_dir(out)
    staging.mkdir()
    files = sorted(str(p) for p in five_files.iterdir())
    digests = [b"\0" * 32] * 5  # force encoding of the files this step is given
    EncodeFiles(files, digests, str(small_tokenizer), "text", str(staging), first.meta["dtype"],
                b"another salt")(None, rank=1, world_size=5)
    salt = f"{first.meta['format']}/{first.meta['version']}/{first.meta['tokenizer']['fingerprint']}/" \
           f"{first.meta['dtype']}\n".encode()
    EncodeFiles(files, digests, str(small_tokenizer), "text", str(staging), first.meta["dtype"], salt)(
        None, rank=0, world_size=5)
    assert part_path(staging, 0).is_file() and part_path(staging, 1).is_file()
    shutil.rmtree(out)
    result = prepare([str(five_files)], str(small_tokenizer), out, workers=1, executor="local", progress=False)
    assert (result.reused_chunks, result.encoded_chunks) == (1, 4)
    assert shard_bytes(out) == shard_bytes(reference)


def test_unknown_executor_is_one_line_error(small_tokenizer, five_files, tmp_path, capsys):
    code = main(["prepare", str(five_files), "--tokenizer", str(small_tokenizer), "--out", str(tmp_path / "s"),
                 "--executor", "spark"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown executor 'spark'" in err
