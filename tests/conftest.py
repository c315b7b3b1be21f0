"""Fixtures shared by test modules: what is expensive to make and read-only once made."""

from __future__ import annotations

from pathlib import Path

import pytest

from xmodel2.windtunnel.proxy import prepare_proxy_data

PROXY_VOCAB = 1024


@pytest.fixture(scope="session")
def proxy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wind tunnel's tokenizer and shards of the bundled corpus, made once per test session
    (`prepare_proxy_data(path, PROXY_VOCAB)` reuses them); trained on a smaller sample than the
    command's default, for a faster tokenizer."""
    path = tmp_path_factory.mktemp("proxy-cache")
    prepare_proxy_data(path, PROXY_VOCAB, max_sentences=20000)
    return path
