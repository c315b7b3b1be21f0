"""Tokenizers: train Xmodel-2-style Unigram vocabularies, load SentencePiece or Hugging Face ones."""

from xmodel2.tokenizer.load import Tokenizer, decode_utf8, load_tokenizer, require_utf8

__all__ = ["Tokenizer", "decode_utf8", "load_tokenizer", "require_utf8"]
