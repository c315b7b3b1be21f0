"""Perplexity of documents: per token, per word, and bits per byte, with rolling windows.

Each document is encoded on its own, with one prefix token (BOS, else EOS) in front so its first
token is predicted too. A document longer than the window `max_length` is cut into windows: each
window predicts the tokens after the previous window's end and sees up to `max_length` tokens
before each of them. With stride = max_length that is lm-evaluation-harness's
`loglikelihood_rolling` (every token predicted once, the last window sliding back to be full);
a smaller stride gives every prediction at least max_length - stride tokens of context.

word perplexity = exp(-LL / words), words as the harness counts them (`re.split(r"\\s+", text)`);
bits per byte = -LL / (UTF-8 bytes · ln 2); token perplexity = exp(-LL / tokens).
"""

from __future__ import annotations

import gzip
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from xmodel2.errors import UserError
from xmodel2.eval.scoring import Scorer


@dataclass
class Window:
    start: int  # first input position in [prefix] + tokens
    end: int  # one past the last input position
    predicted: int  # how many of the last inputs' predictions are scored


def rolling_windows(n_tokens: int, max_length: int, stride: int | None = None) -> list[Window]:
    """Windows over [prefix] + tokens that together predict each of the n tokens exactly once."""
    stride = max_length if stride is None else stride
    if not 0 < stride <= max_length:
        raise UserError(f"stride must be in 1..{max_length} (got {stride})")
    windows, done = [], 0
    while done < n_tokens:
        end = min(n_tokens, max_length if done == 0 else done + stride)
        windows.append(Window(max(0, end - max_length), end, end - done))
        done = end
    return windows


def rolling_loglikelihood(scorer: Scorer, tokens: list[int], max_length: int | None = None,
                          stride: int | None = None) -> float:
    """Summed log-likelihood of every token of a document (no BOS in `tokens`)."""
    max_length = max_length or scorer.max_length
    sequence = [scorer.prefix_id] + list(tokens)
    rows = []
    for w in rolling_windows(len(tokens), max_length, stride):
        # input positions start..end-1 of `sequence` predict tokens at positions start+1..end
        rows.append((sequence[w.start:w.end], sequence[w.end - w.predicted + 1:w.end + 1]))
    total = 0.0
    for i in range(0, len(rows), scorer.batch_size):
        total += sum(ll for ll, _ in scorer.score_rows(rows[i:i + scorer.batch_size]))
    return total


@dataclass
class PerplexityResult:
    loglikelihood: float
    tokens: int
    words: int
    bytes: int
    documents: int

    @property
    def token_perplexity(self) -> float:
        return math.exp(-self.loglikelihood / self.tokens)

    @property
    def word_perplexity(self) -> float:
        return math.exp(-self.loglikelihood / self.words)

    @property
    def bits_per_byte(self) -> float:
        return -self.loglikelihood / self.bytes / math.log(2)


def perplexity(scorer: Scorer, texts: list[str], max_length: int | None = None,
               stride: int | None = None) -> PerplexityResult:
    total = PerplexityResult(0.0, 0, 0, 0, 0)
    for text in texts:
        tokens = scorer.tokenizer.encode(text)
        if not tokens:
            continue
        total.loglikelihood += rolling_loglikelihood(scorer, tokens, max_length, stride)
        total.tokens += len(tokens)
        total.words += len(re.split(r"\s+", text))
        total.bytes += len(text.encode("utf-8"))
        total.documents += 1
    if total.documents == 0:
        raise UserError("perplexity: no non-empty documents")
    return total


def read_texts(path: str | Path) -> list[str]:
    """A JSONL(.gz) file of {"text": ...} documents, or a plain text file (one document)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: text file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="strict") as handle:
        try:
            raw = handle.read()
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if ".jsonl" not in path.name:
        return [raw]
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append(json.loads(line)["text"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{number}: expected a JSON object with a \"text\" string") from None
    return texts
