"""Tokenizers: train Xmodel-2-style Unigram vocabularies, load SentencePiece or Hugging Face ones."""

from xmodel2.tokenizer.load import Tokenizer, load_tokenizer

__all__ = ["Tokenizer", "load_tokenizer"]
