"""Token shards: one folder with `tokens.bin`, `documents.npy` and `meta.json`.

- `tokens.bin`: every document's tokens, each document ending with EOS, as one flat
  little-endian array (uint16 when the vocabulary has at most 65,536 ids, else uint32).
- `documents.npy`: uint64 start offsets of the documents in `tokens.bin`, plus the end (D + 1 values).
- `meta.json`: format version, tokenizer fingerprint and vocabulary size, dtype, token and
  document counts, sha256 of `tokens.bin`, and per-input-file counts.

`ShardReader` memory-maps the arrays, so opening a shard costs nothing however large it is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from xmodel2.errors import UserError
from xmodel2.fileio import read_json

FORMAT = "xmodel2-token-shard"
VERSION = 1
TOKENS_FILE = "tokens.bin"
DOCUMENTS_FILE = "documents.npy"
META_FILE = "meta.json"
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def numpy_dtype(name: str) -> np.dtype:
    return _DTYPES[name]


class ShardReader:
    """A validated, memory-mapped token shard.

    Opening checks the metadata against the files (dtype, sizes, document index); `verify()`
    also reads every token to check the checksum and that each id is below the vocabulary size.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"{self.path}: token shard folder not found")
        self.meta = read_json(self.path / META_FILE, "shard metadata (meta.json)")
        meta = self.meta
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(f"{self.path}: not an xmodel2 token shard (meta.json format is not {FORMAT!r})")
        if meta.get("version") != VERSION:
            raise UserError(f"{self.path}: shard format version {meta.get('version')!r}, expected {VERSION}")
        if meta.get("dtype") not in _DTYPES:
            raise UserError(f"{self.path}: unknown token dtype {meta.get('dtype')!r} in meta.json")
        self.dtype = numpy_dtype(meta["dtype"])
        self.vocab_size = int(meta["tokenizer"]["vocab_size"])
        self.num_tokens = int(meta["tokens"])
        self.num_documents = int(meta["documents"])
        if token_dtype(self.vocab_size) != meta["dtype"]:
            raise UserError(f"{self.path}: dtype {meta['dtype']} does not match vocabulary size {self.vocab_size}")
        self._open_tokens()
        self._open_documents()

    def _open_tokens(self) -> None:
        tokens = self.path / TOKENS_FILE
        if not tokens.is_file():
            raise UserError(f"{tokens}: token file missing")
        expected = self.num_tokens * self.dtype.itemsize
        found = tokens.stat().st_size
        if found != expected or self.num_tokens == 0:
            raise UserError(f"{tokens}: truncated or wrong size: {found} bytes, meta.json says "
                            f"{self.num_tokens} {self.meta['dtype']} tokens ({expected} bytes)")
        self.tokens = np.memmap(tokens, dtype=self.dtype, mode="r", shape=(self.num_tokens,))

    def _open_documents(self) -> None:
        path = self.path / DOCUMENTS_FILE
        try:
            offsets = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot read document index ({exc})") from None
        if (offsets.dtype != np.uint64 or offsets.shape != (self.num_documents + 1,)
                or offsets[0] != 0 or offsets[-1] != self.num_tokens):
            raise UserError(f"{path}: document index does not match meta.json "
                            f"({self.num_documents} documents, {self.num_tokens} tokens)")
        self.offsets = offsets

    def __len__(self) -> int:
        return self.num_documents

    def document(self, index: int) -> np.ndarray:
        """The tokens of document `index`, ending with EOS."""
        return np.asarray(self.tokens[int(self.offsets[index]):int(self.offsets[index + 1])])

    def check_ids(self, tokens: np.ndarray) -> None:
        """Raise if any of `tokens` (read from this shard) is not a valid id."""
        if tokens.size and int(tokens.max()) >= self.vocab_size:
            raise UserError(f"{self.path}: token id {int(tokens.max())} is not below the vocabulary "
                            f"size {self.vocab_size}: shard corrupt or made with another tokenizer")

    def verify(self, block: int = 1 << 24) -> None:
        """Read everything: the sha256 must match meta.json and every id must fit the vocabulary."""
        digest = hashlib.sha256()
        for start in range(0, self.num_tokens, block):
            part = np.asarray(self.tokens[start:start + block])
            self.check_ids(part)
            digest.update(part.tobytes())
        if digest.hexdigest() != self.meta.get("sha256"):
            raise UserError(f"{self.path / TOKENS_FILE}: checksum mismatch (file changed since prepare)")
