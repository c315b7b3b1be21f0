"""`load_tokenizer` and `Tokenizer`: one interface over SentencePiece and Hugging Face tokenizers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from xmodel2.errors import UserError
from xmodel2.fileio import atomic_write_bytes
from xmodel2.tokenizer.backends import SIDE_FILES, HuggingFaceBackend, SentencePieceBackend
from xmodel2.tokenizer.chat import render_chat
from xmodel2.tokenizer.symbols import IM_END, IM_START

SP_NAME, HF_NAME = "tokenizer.model", "tokenizer.json"


class Tokenizer:
    def __init__(self, path: Path):
        data = path.read_bytes()
        if path.suffix == ".json" or (path.suffix != ".model" and data.lstrip()[:1] == b"{"):
            self._backend = HuggingFaceBackend(path, data)
            self.kind = "huggingface"
        else:
            self._backend = SentencePieceBackend(path, data)
            self.kind = "sentencepiece"
        self.path = path
        self.fingerprint = hashlib.sha256(data).hexdigest()
        side = [path.parent / name for name in SIDE_FILES if (path.parent / name).is_file()]
        self.files: list[Path] = [path, *side]
        self.im_start_id = self._backend.token_to_id(IM_START)
        self.im_end_id = self._backend.token_to_id(IM_END)

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, kind={self.kind}, vocab_size={self.vocab_size})"

    # --- ids of special tokens ---
    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size

    @property
    def bos_id(self) -> int | None:
        return self._backend.bos_id

    @property
    def eos_id(self) -> int | None:
        return self._backend.eos_id

    @property
    def pad_id(self) -> int | None:
        return self._backend.pad_id

    @property
    def unk_id(self) -> int | None:
        return self._backend.unk_id

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end a generated reply: EOS and, for chat, `<|im_end|>`."""
        return sorted({i for i in (self.eos_id, self.im_end_id) if i is not None})

    # --- text <-> ids ---
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self.encode_batch([text], add_bos, add_eos)[0]

    def use_one_thread(self) -> None:
        """Encode on this thread only: for worker processes that already share the cores out."""
        self._backend.use_one_thread()

    def encode_batch(self, texts: list[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        batch = self._backend.encode_batch(list(texts))
        if not (add_bos or add_eos):
            return batch
        head = [self._required(self.bos_id, "BOS")] if add_bos else []
        tail = [self._required(self.eos_id, "EOS")] if add_eos else []
        return [head + ids + tail for ids in batch]

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        for i in ids:
            self._check_id(i)
        return self._backend.decode(ids)

    def token_to_id(self, piece: str) -> int | None:
        return self._backend.token_to_id(piece)

    def id_to_token(self, i: int) -> str:
        self._check_id(int(i))
        return self._backend.id_to_token(int(i))

    # --- chat ---
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return render_chat(messages, add_generation_prompt)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
        if self.im_start_id is None or self.im_end_id is None:
            raise UserError(f"{self.path}: tokenizer has no {IM_START}/{IM_END} tokens, so it cannot encode chats")
        return self.encode(render_chat(messages, add_generation_prompt))

    # --- files ---
    def save(self, out_dir: str | Path) -> Path:
        """Copy the tokenizer files (model + side configs) into `out_dir`, each written atomically."""
        out_dir = Path(out_dir)
        for src in self.files:
            name = src.name if src is not self.path else (HF_NAME if self.kind == "huggingface" else SP_NAME)
            atomic_write_bytes(out_dir / name, src.read_bytes())
        return out_dir

    def _required(self, index: int | None, what: str) -> int:
        if index is None:
            raise UserError(f"{self.path}: tokenizer has no {what} token")
        return index

    def _check_id(self, i: int) -> None:
        if not 0 <= i < self.vocab_size:
            raise UserError(f"token id {i} is out of range for {self.path} (vocabulary of {self.vocab_size})")


def require_utf8(text: str, what: str) -> str:
    """`text` if it is valid Unicode; else a one-line error naming `what` (e.g. `--prompt`).

    Python turns undecodable bytes of a command-line argument into lone surrogates, which
    every tokenizer backend chokes on deep inside; here they are named where they came from.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"{bad!r}"
        raise UserError(f"{what}: not UTF-8 text ({byte} at character {exc.start})") from None
    return text


def decode_utf8(data: bytes, what: str) -> str:
    """`data` decoded as UTF-8, or a one-line error naming `what` and the bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte {exc.start})") from None


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A `.model` file, a `tokenizer.json` file, or a folder holding either (tokenizer.model first)."""
    path = Path(path)
    if path.is_dir():
        for name in (SP_NAME, HF_NAME):
            if (path / name).is_file():
                return Tokenizer(path / name)
        raise UserError(f"{path}: folder has neither {SP_NAME} nor {HF_NAME}")
    if not path.is_file():
        raise UserError(f"{path}: tokenizer not found")
    return Tokenizer(path)
