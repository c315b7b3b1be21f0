"""Loss masks: the target value the loss skips, and which tokens of ChatML streams are assistant replies.

`<|im_start|>` and `<|im_end|>` are single pieces, so turns can be found in a token stream itself
without keeping side files: a turn's role is the text between `<|im_start|>` and the first
newline, and its content runs to the next `<|im_end|>`. A mask of assistant content (the closing
`<|im_end|>` included, so the model learns to stop) gives targets with IGNORE_INDEX elsewhere,
which the trainer's loss already skips. Masks are computed over a whole shard so that turns
split across packed sequences keep their role.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xmodel2.errors import UserError

# A target equal to this is not a training target: the loss neither counts nor differentiates it.
# -100 is the value PyTorch's cross_entropy and Hugging Face's labels use by default.
IGNORE_INDEX = -100
MAX_ROLE_TOKENS = 8  # a role name ("assistant") is a few pieces


def assistant_mask(tokens: np.ndarray, tokenizer) -> np.ndarray:
    """Boolean array: True at the tokens of assistant turns' content and their `<|im_end|>`."""
    start_id, end_id = tokenizer.im_start_id, tokenizer.im_end_id
    if start_id is None or end_id is None:
        raise UserError(f"{tokenizer.path}: tokenizer has no <|im_start|>/<|im_end|> pieces, so prompt "
                        "tokens cannot be told from replies")
    tokens = np.asarray(tokens)
    mask = np.zeros(len(tokens), dtype=bool)
    ends = np.flatnonzero(tokens == end_id)
    for start in np.flatnonzero(tokens == start_id).tolist():
        header_end, text = start + 1, ""
        while header_end < len(tokens) and "\n" not in text and header_end - start <= MAX_ROLE_TOKENS:
            header_end += 1
            text = tokenizer.decode(tokens[start + 1:header_end].tolist())
        if text.split("\n", 1)[0].strip() != "assistant":
            continue
        after = np.searchsorted(ends, header_end)
        stop = int(ends[after]) + 1 if after < len(ends) else len(tokens)
        mask[header_end:stop] = True
    return mask


def masked_targets(window: np.ndarray, mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Targets of a (n, L+1) token window: window[:, 1:] with `ignore_index` where mask[:, 1:] is False."""
    targets = np.array(window[:, 1:], dtype=np.int64)
    targets[~mask[:, 1:]] = ignore_index
    return targets


def shard_assistant_mask(shard_dir: str | Path, tokenizer) -> np.ndarray:
    from xmodel2.data.shards import ShardReader

    return assistant_mask(ShardReader(str(shard_dir)).tokens, tokenizer)

