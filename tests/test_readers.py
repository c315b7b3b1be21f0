"""Corpus readers: Parquet, JSON Lines (plain, .gz, .zst), Hugging Face dataset folders, globs.

Every input is a real file written here (pyarrow, zstandard, datasets) from the bundled corpus;
each format must give the same documents, and the same shard bytes, as plain JSONL.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from xmodel2.cli import main
from xmodel2.data import corpus_file
from xmodel2.data.prepare import prepare
from xmodel2.data.readers import DocumentReader, input_files
from xmodel2.errors import UserError
from xmodel2.tokenizer.train import MIN_LEARNED_PIECES, RESERVED_PIECES, train_tokenizer


def bundled_docs(name: str, count: int) -> list[str]:
    with gzip.open(corpus_file(name), "rt", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for _, line in zip(range(count), handle)]


DOCS = bundled_docs("math", 40) + bundled_docs("python-code", 5) + ["Ünïcödé — 中文 text, and an emoji 🙂"]


def jsonl_bytes(docs: list[str], field: str = "text") -> bytes:
    return b"".join(json.dumps({"id": i, field: d}).encode() + b"\n" for i, d in enumerate(docs))


def write_plain(path: Path, docs: list[str]) -> Path:
    path.write_bytes(jsonl_bytes(docs))
    return path


def write_zst(path: Path, docs: list[str]) -> Path:
    data = jsonl_bytes(docs)
    half = len(data) // 2  # two zstd frames, as parallel compressors write them
    compressor = zstandard.ZstdCompressor(level=3)
    path.write_bytes(compressor.compress(data[:half]) + compressor.compress(data[half:]))
    return path


def write_gz(path: Path, docs: list[str]) -> Path:
    path.write_bytes(gzip.compress(jsonl_bytes(docs)))
    return path


def write_parquet(path: Path, docs: list[str]) -> Path:
    table = pa.table({"id": list(range(len(docs))), "text": docs})
    pq.write_table(table, path, row_group_size=7)  # several row groups, read one batch at a time
    return path


def write_hf_dataset(path: Path, docs: list[str]) -> Path:
    import datasets

    datasets.Dataset.from_dict({"text": docs, "id": list(range(len(docs)))}).save_to_disk(path, num_shards=3)
    return path


def write_hf_parquet_folder(path: Path, docs: list[str]) -> Path:
    path.mkdir()
    third = len(docs) // 3
    for index, part in enumerate((docs[:third], docs[third:2 * third], docs[2 * third:])):
        write_parquet(path / f"train-{index:05d}-of-00003.parquet", part)
    return path


WRITERS = {"d.jsonl": write_plain, "d.jsonl.zst": write_zst, "d.json.gz": write_gz,
           "d.parquet": write_parquet, "hf-dataset": write_hf_dataset, "hf-parquet": write_hf_parquet_folder}


def read_all(inputs: list[str], field: str = "text", strict: bool = False) -> tuple[list[str], list[DocumentReader]]:
    readers = [DocumentReader(path, field, strict) for path in input_files(inputs)]
    return [text for reader in readers for text in reader], readers


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_gives_the_same_documents(tmp_path, name):
    path = WRITERS[name](tmp_path / name, DOCS)
    docs, readers = read_all([str(path)])
    assert docs == DOCS
    assert sum(r.counts.documents for r in readers) == len(DOCS)
    assert sum(r.counts.skipped for r in readers) == 0


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer([corpus_file("math"), corpus_file("python-code")], out,
                    vocab_size=RESERVED_PIECES + MIN_LEARNED_PIECES + 200, max_sentences=5_000)
    return out


def test_every_format_gives_the_same_shard_bytes(tmp_path, tokenizer):
    shards = {}
    for name, write in WRITERS.items():
        source = write(tmp_path / name, DOCS)
        result = prepare([str(source)], str(tokenizer), tmp_path / f"shard-{name}", workers=1,
                         chunk_chars=8_000, progress=False)
        assert result.meta["documents"] == len(DOCS)
        shards[name] = ((tmp_path / f"shard-{name}" / "tokens.bin").read_bytes(),
                        (tmp_path / f"shard-{name}" / "documents.npy").read_bytes(),
                        result.meta["sha256"], result.meta["request_sha256"])
    reference = shards.pop("d.jsonl")
    for name, shard in shards.items():
        assert shard == reference, name


def test_hf_dataset_dict_reads_splits_in_listed_order(tmp_path):
    import datasets

    splits = {"train": DOCS[:20], "validation": DOCS[20:]}
    datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v}) for k, v in splits.items()}).save_to_disk(
        tmp_path / "dd")
    files = input_files([str(tmp_path / "dd")])
    assert all(f.suffix == ".arrow" for f in files)  # no dataset_info.json / state.json as documents
    assert read_all([str(tmp_path / "dd")])[0] == DOCS


def test_globs_and_folders_of_any_mix(tmp_path):
    folder = tmp_path / "mix"
    folder.mkdir()
    write_parquet(folder / "a.parquet", DOCS[:10])
    write_zst(folder / "b.jsonl.zst", DOCS[10:20])
    (folder / "c.txt").write_text(DOCS[20], encoding="utf-8")
    write_gz(folder / ".hidden.json.gz", ["never read"])
    write_gz(tmp_path / "z1.json.gz", DOCS[21:30])
    write_gz(tmp_path / "z0.json.gz", DOCS[30:])
    docs, _ = read_all([str(folder), str(tmp_path / "z*.json.gz")])
    assert docs == DOCS[:21] + DOCS[30:] + DOCS[21:30]  # folder in name order, then glob matches sorted
    with pytest.raises(UserError, match=r"z9\*\.json: no files match"):
        input_files([str(tmp_path / "z9*.json")])


def test_parquet_bad_rows_are_counted(tmp_path, tokenizer, capsys):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["good one", None, "  ", "good two", None]}), path, row_group_size=2)
    args = ["prepare", str(path), "--tokenizer", str(tokenizer), "--out", str(tmp_path / "shard")]
    assert main(args) == 0
    assert f"{path}: skipped 2 malformed rows, 0 invalid UTF-8, 1 empty documents" in capsys.readouterr().out
    meta = json.loads((tmp_path / "shard" / "meta.json").read_text())
    assert meta["documents"] == 2
    assert meta["skipped"] == {"malformed_lines": 2, "invalid_utf8": 0, "empty_documents": 1}

    code = main(args[:-2] + ["--out", str(tmp_path / "strict"), "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"xmodel2: error: {path}:row 2: null 'text'")


def test_zst_bad_lines_name_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "fine"}\n{"text": 3}\n{"text": "x\xff"}\n'))
    docs, (reader,) = read_all([str(path)])
    assert docs == ["fine"] and (reader.counts.malformed_lines, reader.counts.invalid_utf8) == (1, 1)
    with pytest.raises(UserError, match=rf"^{path}:2: no string field 'text'"):
        read_all([str(path)], strict=True)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_zst_is_one_line_error(tmp_path, damage):
    path = tmp_path / "d.jsonl.zst"
    data = zstandard.ZstdCompressor().compress(jsonl_bytes(DOCS))
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not zstd at all" * 10)
    with pytest.raises(UserError, match=rf"^{path}: cannot read"):
        read_all([str(path)])


@pytest.mark.parametrize("problem", ["missing column", "not strings", "not parquet"])
def test_unusable_parquet_is_one_line_error(tmp_path, tokenizer, capsys, problem):
    path = tmp_path / "d.parquet"
    if problem == "not parquet":
        path.write_bytes(b"PAR1 but not really")
    else:
        pq.write_table(pa.table({"content" if problem == "missing column" else "text": [1, 2]}), path)
    code = main(["prepare", str(path), "--tokenizer", str(tokenizer), "--out", str(tmp_path / "shard")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(path) in err
    assert {"missing column": "no column 'text' (columns: content", "not strings": "holds int64",
            "not parquet": "cannot read as Parquet"}[problem] in err
    assert not (tmp_path / "shard").exists()


def test_text_field_chooses_the_column(tmp_path, tokenizer, capsys):
    path = tmp_path / "stack.parquet"
    pq.write_table(pa.table({"content": DOCS[:5], "text": ["other"] * 5}), path)
    out = tmp_path / "shard"
    assert main(["prepare", str(path), "--tokenizer", str(tokenizer), "--out", str(out), "--text-field",
                 "content"]) == 0
    assert "5 documents" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["jsonl_field"] == "content"


@pytest.mark.parametrize("name, writer", [("docs.parquet", write_parquet), ("docs.jsonl.zst", write_zst)])
def test_a_tokenizer_trains_on_any_format_as_on_jsonl(tmp_path, name, writer):
    """`xmodel2 tokenizer train` reads its inputs with the data readers: a Parquet or zstd file
    gives the same tokenizer, byte for byte, as the same documents in plain JSONL."""
    docs = bundled_docs("math", 200)
    models = []
    for path in (write_plain(tmp_path / "docs.jsonl", docs), writer(tmp_path / name, docs)):
        out = tmp_path / f"tok-{path.name}"
        assert main(["tokenizer", "train", "--input", str(path), "--out", str(out), "--vocab-size",
                     str(RESERVED_PIECES + MIN_LEARNED_PIECES + 100)]) == 0
        models.append((out / "tokenizer.model").read_bytes())
    assert models[0] == models[1]
