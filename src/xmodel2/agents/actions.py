"""Parsing an action string such as `Search[Colorado orogeny]` into a name and an argument."""

from __future__ import annotations

import re
from typing import NamedTuple

NAMES = ("search", "lookup", "finish", "think")
# name[argument]: the name in any case, the argument everything up to the last "]".
ACTION = re.compile(r"([A-Za-z]+)\[(.*)\]", re.DOTALL)


class Action(NamedTuple):
    name: str
    argument: str


def parse_action(text: str) -> Action | None:
    """The action in `text`, or None when it is malformed (unknown name, no brackets, empty search)."""
    match = ACTION.fullmatch(text.strip())
    if match is None:
        return None
    name, argument = match.group(1).lower(), match.group(2).strip()
    if name not in NAMES or (name in ("search", "lookup") and not argument):
        return None
    return Action(name, argument)
