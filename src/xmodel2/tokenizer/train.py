"""Train a SentencePiece Unigram tokenizer with the settings of the released Xmodel-2 vocabulary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator

from xmodel2.errors import UserError
from xmodel2.fileio import atomic_directory, atomic_write_bytes, atomic_write_json
from xmodel2.tokenizer.chat import CHAT_TEMPLATE
from xmodel2.tokenizer.corpus import MAX_SENTENCE_BYTES, document_sentences, plain_documents, sample
from xmodel2.tokenizer.symbols import BOS, EOS, IM_END, IM_START, RESERVED_PIECES, UNK, USER_SYMBOLS

# (inputs, JSON field or column) -> the inputs' documents
DocumentSource = Callable[[Iterable[str | Path], str], Iterator[str]]

MODEL_NAME = "tokenizer.model"
CONFIG_NAME = "tokenizer_config.json"
# SentencePiece splits EM work into this many chunks and the float sums depend on the split, so a
# fixed count (not the machine's core count) gives the same model on every machine.
TRAIN_THREADS = 16
# Fewer learned pieces than this leaves almost every word in single characters or bytes.
MIN_LEARNED_PIECES = 256
MIN_VOCAB_SIZE = RESERVED_PIECES + MIN_LEARNED_PIECES
# Four times the largest vocabulary in common use (Gemma's 256k): a typo of a few zeros beyond it
# would make SentencePiece allocate for billions of pieces before it noticed.
MAX_VOCAB_SIZE = 1 << 20

# lowered for corpora with more distinct characters than the vocabulary holds (character_coverage)
RELEASED_CHARACTER_COVERAGE = 0.9999
# The release's trainer spec, except what depends on the corpus and the machine.
RELEASED_OPTIONS = dict(
    model_type="unigram",
    byte_fallback=True,
    split_digits=True,
    split_by_unicode_script=True,
    split_by_whitespace=True,
    split_by_number=True,
    max_sentencepiece_length=16,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=False,
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    unk_piece=UNK, bos_piece=BOS, eos_piece=EOS,
    user_defined_symbols=list(USER_SYMBOLS),
    max_sentence_length=MAX_SENTENCE_BYTES,
)


def tokenizer_config() -> dict:
    """What Hugging Face tools read beside tokenizer.model: special tokens and the chat template."""
    return {
        "bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": None,
        "add_bos_token": False, "add_eos_token": False,
        "additional_special_tokens": [IM_START, IM_END],
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def train_tokenizer(inputs: list[str | Path], out_dir: str | Path, vocab_size: int,
                    jsonl_field: str = "text", max_sentences: int | None = 2_000_000,
                    seed: int = 0, read_documents: DocumentSource = plain_documents) -> Path:
    """Train on `inputs` and write tokenizer.model + tokenizer_config.json into `out_dir`.

    `read_documents(inputs, jsonl_field)` yields the inputs' documents (by default text and JSONL
    files; the data layer's reader adds Parquet, zstd and dataset folders).

    `max_sentences` caps memory and time with a uniform seeded sample of the input lines.
    The same inputs and seed give the same model bytes on any machine (with the same sentencepiece version).
    """
    import sentencepiece as spm

    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"vocab size {vocab_size} is too small: {RESERVED_PIECES} ids are taken by "
                        f"special, user-defined and byte pieces; use at least {MIN_VOCAB_SIZE}")
    if vocab_size > MAX_VOCAB_SIZE:
        raise UserError(f"vocab size {vocab_size:,} is too large; use at most {MAX_VOCAB_SIZE:,}")
    if max_sentences is not None and max_sentences < 1:
        raise UserError(f"max sentences must be positive, got {max_sentences}")
    if not inputs:
        raise UserError("no training input given")
    corpus = sample(document_sentences(read_documents(inputs, jsonl_field)), max_sentences, seed)
    if not corpus:
        raise UserError(f"no text found in {', '.join(str(p) for p in inputs)}")

    spm.set_random_generator_seed(seed)
    proto = _train(spm, corpus, vocab_size, character_coverage(corpus, vocab_size))
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, kind="tokenizer") as tmp:
        atomic_write_bytes(tmp / MODEL_NAME, proto)
        atomic_write_json(tmp / CONFIG_NAME, tokenizer_config())
    return out_dir


def character_coverage(corpus: list[str], vocab_size: int) -> float:
    """The released coverage, lowered when the corpus has too many distinct characters to fit.

    SentencePiece gives every character within the coverage its own piece and fails when they do
    not fit the vocabulary (a few MB of Chinese holds thousands). We keep the most frequent
    characters within half of the learnable ids; byte fallback spells the rest.
    """
    counts: Counter[str] = Counter()
    for sentence in corpus:
        counts.update(sentence)
    budget = (vocab_size - RESERVED_PIECES) // 2
    frequencies = sorted(counts.values(), reverse=True)
    if len(frequencies) <= budget:
        return RELEASED_CHARACTER_COVERAGE
    return min(RELEASED_CHARACTER_COVERAGE, sum(frequencies[:budget]) / sum(frequencies))


def _train(spm, corpus: list[str], vocab_size: int, coverage: float) -> bytes:
    import io

    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus), model_writer=writer, vocab_size=vocab_size,
            character_coverage=coverage,
            # a small corpus may not hold enough distinct pieces: return fewer rather than fail
            hard_vocab_limit=False,
            # we sample ourselves (seeded); SentencePiece would sample again with its own RNG
            input_sentence_size=0, shuffle_input_sentence=False,
            num_threads=TRAIN_THREADS, minloglevel=1,
            **RELEASED_OPTIONS)
    except RuntimeError as exc:
        raise UserError(f"SentencePiece training failed: {str(exc).strip().splitlines()[-1]}") from None
    return writer.getvalue()
