"""The tokenizer of a model folder as GGUF metadata, in the form llama.cpp tokenizes from.

Two kinds of tokenizer are written:

* SentencePiece unigram (`tokenizer.model`, what `xmodel2 tokenizer train` makes): llama.cpp's
  unigram vocabulary ("t5"), every piece with its score and type, so that llama.cpp finds the same
  best segmentation. (Its "llama" vocabulary merges pairs by score, which a unigram vocabulary
  cannot follow: it segmented every line of a test text differently.) llama.cpp's unigram
  tokenizer has no byte fallback: a character outside the vocabulary becomes the unknown token
  there, where SentencePiece spells it in byte pieces. A SentencePiece BPE model is written as
  the "llama" vocabulary, which is its algorithm. The piece types of SentencePiece's model file
  are GGUF's token types, number for number.
* Byte-level BPE (`tokenizer.json`, e.g. an imported SmolLM2): the "gpt2" vocabulary with its
  merges and the name of the pre-tokenizer split llama.cpp applies before the merges. Only
  splits llama.cpp knows by name are accepted, since any other would tokenize differently.

A model whose embedding has more rows than the tokenizer has tokens (a vocabulary padded for
speed) gets placeholder tokens of type "unused" for the extra rows: llama.cpp needs one token per row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from xmodel2.errors import UserError
from xmodel2.tokenizer.chat import CHAT_TEMPLATE

# GGUF token types (gguf.TokenType), written out so that this module loads without gguf.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SENTENCEPIECE_BPE = 2  # TrainerSpec.model_type; 1 is unigram


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    pre: str | None = None  # tokenizer.ggml.pre, for "gpt2"
    add_space_prefix: bool | None = None  # SentencePiece's dummy prefix
    remove_extra_whitespaces: bool | None = None  # SentencePiece's collapsing of runs of spaces
    add_bos: bool = False  # whether llama.cpp puts BOS before a prompt (as `xmodel2 generate` does)
    chat_template: str = CHAT_TEMPLATE

    def padded_to(self, rows: int, what: str) -> "Vocab":
        if len(self.tokens) > rows:
            raise UserError(f"{what}: the tokenizer has {len(self.tokens)} tokens but the model's "
                            f"embedding only {rows} rows")
        extra = rows - len(self.tokens)
        self.tokens += [f"<unused_{i}>" for i in range(len(self.tokens), rows)]
        self.types += [UNUSED] * extra
        if self.scores is not None:
            self.scores += [-1e4] * extra
        return self


def read_vocab(folder: Path) -> Vocab:
    """The vocabulary of the tokenizer files in `folder` (tokenizer.model or tokenizer.json)."""
    if (folder / "tokenizer.model").is_file():
        vocab = sentencepiece_vocab(folder / "tokenizer.model")
    elif (folder / "tokenizer.json").is_file():
        vocab = byte_level_vocab(folder / "tokenizer.json")
    else:
        raise UserError(f"{folder}: no tokenizer.model or tokenizer.json to put in the GGUF file")
    template = _configured_chat_template(folder / "tokenizer_config.json")
    if template:
        vocab.chat_template = template
    return vocab


def sentencepiece_vocab(path: Path) -> Vocab:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError, not a ValueError
        raise UserError(f"{path}: not a SentencePiece model ({exc})") from None
    spaces = dict(add_space_prefix=bool(proto.normalizer_spec.add_dummy_prefix),
                  remove_extra_whitespaces=bool(proto.normalizer_spec.remove_extra_whitespaces))
    if proto.trainer_spec.model_type == SENTENCEPIECE_BPE:
        return Vocab("llama", [p.piece for p in proto.pieces], [int(p.type) for p in proto.pieces],
                     scores=[float(p.score) for p in proto.pieces], **spaces)
    normal = [p.score for p in proto.pieces if p.type == NORMAL]
    best = max(normal) if normal else 0.0
    tokens, types, scores = [], [], []
    for piece in proto.pieces:
        tokens.append(piece.piece)
        if piece.type == USER_DEFINED:
            # SentencePiece matches these inside its lattice with a bonus by length, instead of
            # cutting the text at them first as llama.cpp does with user-defined tokens; as
            # normal pieces with SentencePiece's own bonus, the lattice picks them the same way.
            types.append(NORMAL)
            scores.append(len(piece.piece) * best - 0.1)
        else:
            types.append(int(piece.type))
            scores.append(float(piece.score))
    return Vocab("t5", tokens, types, scores=scores, **spaces)


def byte_level_vocab(path: Path) -> Vocab:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: invalid JSON ({exc})") from None
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(spec.get("decoder")):
        raise UserError(f"{path}: GGUF export takes byte-level BPE tokenizer.json files (GPT-2 style) "
                        f"or SentencePiece models; this one is {model.get('type')!r} with decoder "
                        f"{(spec.get('decoder') or {}).get('type')!r}")
    if spec.get("normalizer") is not None:
        raise UserError(f"{path}: its normalizer ({spec['normalizer'].get('type')}) has no llama.cpp "
                        "equivalent, so llama.cpp would tokenize differently")
    by_id: dict[int, str] = {index: token for token, index in model["vocab"].items()}
    types = {index: NORMAL for index in by_id}
    for added in spec.get("added_tokens") or []:
        by_id[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    count = max(by_id) + 1
    missing = [i for i in range(count) if i not in by_id]
    if missing:
        raise UserError(f"{path}: token ids are not contiguous (id {missing[0]} has no token)")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return Vocab("gpt2", [by_id[i] for i in range(count)], [types[i] for i in range(count)],
                 merges=merges, pre=pre_tokenizer_name(spec.get("pre_tokenizer"), path))


def pre_tokenizer_name(pre: dict | None, path: Path) -> str:
    """llama.cpp's name for the split this pre-tokenizer makes before byte-level BPE."""
    if _plain_byte_level(pre):
        return "gpt-2"
    steps = (pre or {}).get("pretokenizers") or []
    if (len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits")
            and _plain_byte_level(steps[1])):
        return "smollm"  # SmolLM's: single digits, then GPT-2's split
    shown = json.dumps(pre)[:120] if pre is not None else "none"
    raise UserError(f"{path}: pre_tokenizer {shown} has no llama.cpp equivalent (GGUF export knows "
                    "GPT-2's byte-level split, with or without single digits first)")


def _plain_byte_level(step: dict | None) -> bool:
    # add_prefix_space would put a space before the text, which llama.cpp never does
    return (step is not None and step.get("type") == "ByteLevel" and step.get("use_regex", True)
            and not step.get("add_prefix_space", True))


def _is_byte_level(decoder: dict | None) -> bool:
    return decoder is not None and decoder.get("type") == "ByteLevel"


def _configured_chat_template(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return template if isinstance(template, str) and template else None
