"""The special pieces of the released Xmodel-2 vocabulary, in their released order.

Ids 0-2 are `<unk>`, `<s>`, `</s>`; the 103 user-defined symbols follow at ids 3-105; with byte
fallback, the 256 byte pieces `<0x00>`..`<0xFF>` take ids 106-361. Every tokenizer we train puts
these at the same ids, so chat and control ids are the same across vocabulary sizes.
"""

from __future__ import annotations

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# The release spells some symbols as escape sequences: the piece r"\n" is a backslash followed by
# "n" (not a newline) and r"\uff10" is six ASCII characters (not "０"). We keep them byte for byte
# so that every id equals the released model's; real newlines and full-width digits are covered
# by the learned pieces or by byte fallback.
USER_SYMBOLS: tuple[str, ...] = (
    "<SEP>", "<CLS>", r"\n", r"\t", r"\r",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
    r"\uff10", r"\uff11", r"\uff12", r"\uff13", r"\uff14",
    r"\uff15", r"\uff16", r"\uff17", r"\uff18", r"\uff19",
    r"\uff0c", r"\u3002", r"\uff01", r"\uff1f", r"\u3001", r"\uff1a", r"\uffe5",
    ".", "!", "?",
    r"\u300a", r"\u300b", r"\u3010", r"\u3011", r"\u300e", r"\u300f",
    "```", "<!--", "-->", "---", "<!DOCTYPE>",
    r"\uff1b", r"\uff0e", r"\uff1d", r"\uff1c", r"\uff1e", r"\uff0d", r"\uff0b", r"\uff05",
    r"\u203c", r"\u32a3", r"\uff0f", r"\uff5c",
    "[商品]", "[图]", "[视频]", "[链接]",
    "~", r"\uff5e",
    IM_START, IM_END, "<|end_of_text|>", "<|image_start|>", "<|image_end|>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|robot|>",
    "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_response_start|>", "<|tool_response_end|>",
    # runs of 2, 4, ... 64 SentencePiece spaces, so indentation costs few tokens
    *("\u2581" * (2 ** k) for k in range(1, 7)),
    *(f"<reserved_{i}>" for i in range(20)),
)

FIRST_USER_ID = 3
BYTE_PIECES = 256
# unk, bos, eos + user symbols + byte pieces: ids that exist before any learned piece
RESERVED_PIECES = FIRST_USER_ID + len(USER_SYMBOLS) + BYTE_PIECES
