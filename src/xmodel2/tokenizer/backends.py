"""The two tokenizer engines behind `Tokenizer`: SentencePiece models and Hugging Face tokenizer.json.

A backend only turns text into ids and back; BOS/EOS, chat and file handling live in `Tokenizer`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from xmodel2.errors import UserError


class SentencePieceBackend:
    def __init__(self, path: Path, data: bytes):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(data)
        except (RuntimeError, OSError, TypeError) as exc:
            raise UserError(f"{path}: not a SentencePiece model ({str(exc).strip() or type(exc).__name__})") from None
        self.vocab_size = self._sp.get_piece_size()
        self.unk_id = _id_or_none(self._sp.unk_id())
        self.bos_id = _id_or_none(self._sp.bos_id())
        self.eos_id = _id_or_none(self._sp.eos_id())
        self.pad_id = _id_or_none(self._sp.pad_id())
        self._threads: int | None = None  # None: SentencePiece's default, every core

    def use_one_thread(self) -> None:
        self._threads = 1

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts, num_threads=self._threads)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def token_to_id(self, piece: str) -> int | None:
        index = self._sp.piece_to_id(piece)
        # SentencePiece answers unk_id for unknown pieces
        return None if index == self._sp.unk_id() and piece != self._sp.id_to_piece(index) else index

    def id_to_token(self, index: int) -> str:
        return self._sp.id_to_piece(index)


class HuggingFaceBackend:
    """A `tokenizers` tokenizer.json; special tokens come from the sibling config files."""

    def __init__(self, path: Path, data: bytes):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._tok = HFTokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:  # the Rust side raises a bare Exception for any malformed file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path}: not a Hugging Face tokenizer.json ({reason})") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        specials = _special_tokens(path.parent)
        self.unk_id = self._special_id(specials.get("unk_token"))
        self.bos_id = self._special_id(specials.get("bos_token"))
        self.eos_id = self._special_id(specials.get("eos_token"))
        self.pad_id = self._special_id(specials.get("pad_token"))

    def use_one_thread(self) -> None:
        # `tokenizers` reads this before each parallel batch: off means one thread
        os.environ["TOKENIZERS_PARALLELISM"] = "false"

    def _special_id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # no post-processor: BOS/EOS are added by Tokenizer only when asked
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        # keep chat markers in the text, as SentencePiece does for user-defined symbols
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_to_id(self, piece: str) -> int | None:
        return self._tok.token_to_id(piece)

    def id_to_token(self, index: int) -> str:
        return self._tok.id_to_token(index)


SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _special_tokens(folder: Path) -> dict[str, str]:
    """bos/eos/unk/pad token strings from tokenizer_config.json, else special_tokens_map.json."""
    found: dict[str, str] = {}
    for name in reversed(SIDE_FILES):  # tokenizer_config.json wins
        path = folder / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: invalid JSON ({exc})") from None
        if not isinstance(config, dict):
            raise UserError(f"{path}: expected a JSON object")
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = config.get(key)
            if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
                value = value.get("content")
            if isinstance(value, str):
                found[key] = value
    return found


def _id_or_none(index: int) -> int | None:
    return None if index < 0 else index
