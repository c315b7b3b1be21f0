"""Atomic folders: complete or absent, and never replacing a folder xmodel2 did not write."""

import json

import pytest

from xmodel2.errors import UserError
from xmodel2.fileio import OWNER_MARK, UNKNOWN, atomic_directory, check_replaceable, folder_kind


def test_atomic_directory_replaces_its_own_output_only(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out, kind="model") as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_directory(out, kind="model") as tmp:  # our own folder: replaced in one rename
        (tmp / "b.txt").write_text("2")
    assert (out / "b.txt").read_text() == "2" and not (out / "a.txt").exists()

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not written by xmodel2"):
        with atomic_directory(foreign, kind="model") as tmp:
            (tmp / "x").write_text("x")
    assert (foreign / "thesis.tex").read_text() == "precious"

    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty, kind="model") as tmp:
        (tmp / "c.txt").write_text("3")
    assert (empty / "c.txt").is_file()


def test_crash_inside_leaves_previous_folder(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out, kind="model") as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(out, kind="model") as tmp:
            (tmp / "v2").write_text("2")
            raise RuntimeError("killed")
    assert (out / "v1").is_file() and not (out / "v2").exists()
    assert not (tmp_path / ".out.tmp").exists()


def test_a_crash_between_the_two_renames_gets_the_old_folder_back(tmp_path):
    """The state a power loss can leave inside publish_directory: the old folder moved aside, the
    new one not yet in place. The next write finds the old one back, and judges it by its kind."""
    out = tmp_path / "step-00000010"
    with atomic_directory(out, kind="checkpoint") as tmp:
        (tmp / "trainer_state.json").write_text("{}")
    out.rename(tmp_path / ".step-00000010.old")
    with pytest.raises(UserError, match="holds a training checkpoint"):
        with atomic_directory(out, kind="model"):
            pass
    assert (out / "trainer_state.json").read_text() == "{}"
    assert not (tmp_path / ".step-00000010.old").exists()


def test_marks_name_the_kind_and_only_the_same_kind_is_replaced(tmp_path):
    out = tmp_path / "tok"
    with atomic_directory(out, kind="tokenizer") as tmp:
        (tmp / "tokenizer.model").write_bytes(b"x")
    assert json.loads((out / OWNER_MARK).read_text()) == {"kind": "tokenizer", "version": 1}
    assert folder_kind(out) == "tokenizer"
    with pytest.raises(UserError, match=r"tok: holds a tokenizer folder; this writes a model folder"):
        with atomic_directory(out, kind="model"):
            pass
    assert (out / "tokenizer.model").read_bytes() == b"x"


def test_legacy_marks_are_read_by_the_folder_content(tmp_path):
    legacy = "written by xmodel2; this folder may be replaced by it\n"
    layouts = {"checkpoint": ["config.json", "model.safetensors", "trainer_state.json"],
               "model": ["config.json", "model.safetensors"],
               "shards": ["meta.json", "tokens.bin"],
               UNKNOWN: ["something.txt"]}
    for kind, names in layouts.items():
        folder = tmp_path / kind
        folder.mkdir()
        (folder / OWNER_MARK).write_text(legacy)
        for name in names:
            (folder / name).write_text("{}")
        assert folder_kind(folder) == kind
    with pytest.raises(UserError, match="its kind is not recognised"):
        check_replaceable(tmp_path / UNKNOWN, "model")
    # unmarked: foreign, except the layout of a run from before runs were marked
    run = tmp_path / "old-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run_config.json").write_text("{}")
    assert folder_kind(run) == "run"
    (tmp_path / "file").write_text("x")
    assert folder_kind(tmp_path / "file") == "file"
    assert folder_kind(tmp_path / "absent") is None
    with pytest.raises(UserError, match="file: is a file, not a folder"):
        check_replaceable(tmp_path / "file", "shards")
