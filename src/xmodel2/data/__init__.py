"""Data: the bundled corpus, token shards (`xmodel2 prepare`), and token-budgeted training mixtures.

The shard writer is `xmodel2.data.prepare.prepare` (not re-exported: the name is its module's).

Names are imported on first use (PEP 562) so that `prepare`'s worker processes, which import
this package, do not pay for torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CORPUS_DIR": "corpus", "corpus_file": "corpus",
    "MixtureDataset": "mixture", "SequentialDataset": "mixture", "SourceSpec": "mixture",
    "is_held_out": "mixture",
    "ShardReader": "shards",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xmodel2.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"xmodel2.data.{_EXPORTS[name]}"), name)
