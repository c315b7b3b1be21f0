"""Data: the bundled corpus, token shards (`xmodel2 prepare`), and token-budgeted training mixtures."""

from xmodel2.data.corpus import CORPUS_DIR, corpus_file
from xmodel2.data.mixture import MixtureDataset, SequentialDataset, SourceSpec, is_held_out
from xmodel2.data.prepare import prepare
from xmodel2.data.shards import ShardReader

__all__ = ["CORPUS_DIR", "MixtureDataset", "SequentialDataset", "ShardReader", "SourceSpec", "corpus_file",
           "is_held_out", "prepare"]
