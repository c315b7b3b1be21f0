"""Atomic folders: complete or absent, and never replacing a folder xmodel2 did not write."""

import pytest

from xmodel2.errors import UserError
from xmodel2.fileio import atomic_directory


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
