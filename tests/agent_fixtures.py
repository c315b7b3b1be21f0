"""A fixture shared by the agent tests: a slice of the bundled Wikipedia as a user's store."""

from __future__ import annotations

from pathlib import Path

import pytest

from run_fixtures import slice_jsonl


@pytest.fixture(scope="module")
def store_file(tmp_path_factory) -> Path:
    """The first 150 pages of the bundled wiki-train split, as a user's JSONL store."""
    return slice_jsonl("wiki-train", tmp_path_factory.mktemp("store") / "slice.jsonl", 150)
