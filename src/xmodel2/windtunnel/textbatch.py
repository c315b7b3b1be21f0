"""One fixed batch of real text, as UTF-8 byte tokens, for probes that need the same input every step.

Byte tokens need no trained tokenizer, fit any vocabulary of 256 or more, and still carry the
skewed, structured statistics of real text (which random tokens lack). The text comes from a file
the user names or, by default, the Python language reference that CPython ships as
`pydoc_data.topics`; where that module is missing, the batch falls back to seeded random tokens
and says so in its description.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from xmodel2.errors import UserError

BYTE_VOCAB = 256


@dataclass
class FixedBatch:
    inputs: torch.Tensor   # (batch, seq) int64
    targets: torch.Tensor  # (batch, seq) int64, inputs shifted by one
    source: str            # where the tokens came from, in words


def fixed_batch(batch_size: int, seq_len: int, vocab_size: int, text_path: Path | None = None,
                seed: int = 0) -> FixedBatch:
    """`batch_size` windows of `seq_len + 1` tokens spread evenly over the text."""
    if vocab_size < BYTE_VOCAB:
        raise UserError(f"vocab_size {vocab_size} is below {BYTE_VOCAB}: byte tokens need 256 ids")
    needed = batch_size * (seq_len + 1)
    data, source = _text_bytes(text_path)
    if data is None:
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=generator)
        source = f"seeded random tokens (seed {seed}; {source})"
    else:
        if len(data) < needed:
            raise UserError(f"{source}: {len(data)} bytes of text, need at least {needed} "
                            f"for {batch_size} windows of {seq_len + 1} tokens")
        stride = (len(data) - (seq_len + 1)) // max(batch_size - 1, 1)
        windows = [data[i * stride:i * stride + seq_len + 1] for i in range(batch_size)]
        tokens = torch.tensor([list(w) for w in windows], dtype=torch.int64)
        source = f"UTF-8 bytes of {source}"
    return FixedBatch(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(), source)


def _text_bytes(text_path: Path | None) -> tuple[bytes | None, str]:
    if text_path is not None:
        path = Path(text_path)
        if not path.is_file():
            raise UserError(f"{path}: text file not found")
        return path.read_bytes(), str(path)
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return None, "pydoc_data is not installed, so no text was available"
    # Sorted keys make the text, and so the batch, identical on every run.
    text = "\n\n".join(topics[key] for key in sorted(topics))
    return text.encode("utf-8"), "the Python language reference (pydoc_data.topics)"
