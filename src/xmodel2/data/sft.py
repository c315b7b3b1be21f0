"""SFT data: chat and instruction JSONL files → ChatML text documents, one category per file.

Accepted line formats (one JSON object per line, `.jsonl` or `.jsonl.gz`):
- chat, OpenAI style: `{"messages": [{"role": "user", "content": "..."}, ...]}`;
- chat, ShareGPT style: `{"conversations": [{"from": "human", "value": "..."}, ...]}` (the key
  `messages` is accepted too); `human`→user, `gpt`→assistant;
- instruction: `{"instruction": "...", "input": "...", "output": "..."}` (`input` and `system`
  optional): one user turn (instruction, then input) and one assistant turn.

Each conversation is rendered with the tokenizer's chat template (ChatML,
`<|im_start|>role\\ncontent<|im_end|>\\n`). Every file carries one of the five categories of the
report's SFT set. A line that cannot be read is never dropped silently: it is counted by kind with
its FILE:LINE, and `strict=True` turns the first one into a UserError.

A fixed share of conversations is held out for validation by a hash of the first user turn, so
the same prompt always lands in the same split, whatever file or run it comes from.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from xmodel2.data.corpus import BUNDLED_ROOT
from xmodel2.data.readers import raw_lines
from xmodel2.errors import UserError
from xmodel2.fileio import atomic_directory, atomic_write_json, read_json

CATEGORIES = ("math", "code", "logic", "knowledge", "commonsense")
BUNDLED_DIR = BUNDLED_ROOT / "sft"
MANIFEST = "manifest.json"
VALIDATION_FILE = "sft-validation.jsonl"
REPORT_FILE = "sft-report.json"
DEFAULT_HELD_OUT_PERCENT = 5
MAX_LISTED_ERRORS = 50  # per file, in the report; every error is still counted

# ShareGPT and other common spellings → ChatML roles
ROLE_NAMES = {
    "system": "system",
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool",
}


@dataclass(frozen=True)
class SFTFile:
    path: Path
    category: str

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise UserError(f"{self.path}: unknown SFT category {self.category!r} "
                            f"(categories: {', '.join(CATEGORIES)})")


@dataclass
class SFTCounts:
    """What one file gave: conversations kept, and each kind of bad line with where it was."""

    path: str
    category: str
    conversations: int = 0
    errors: Counter = field(default_factory=Counter)
    error_lines: list[str] = field(default_factory=list)  # "FILE:LINE: message", the first few

    def as_dict(self) -> dict:
        return {"path": self.path, "category": self.category, "conversations": self.conversations,
                "errors": dict(sorted(self.errors.items())), "error_lines": self.error_lines}


def parse_sft_file_spec(spec: str) -> SFTFile:
    """`CATEGORY=PATH` (what the command line takes)."""
    category, sep, path = spec.partition("=")
    if not sep or not path:
        raise UserError(f"SFT input {spec!r}: expected CATEGORY=PATH with CATEGORY one of "
                        f"{', '.join(CATEGORIES)}")
    return SFTFile(Path(path), category)


def bundled_sft_files(folder: Path = BUNDLED_DIR) -> list[SFTFile]:
    """The bundled default SFT set (xmodel2/bundled/sft/), as listed in its manifest."""
    manifest = read_json(folder / MANIFEST, "SFT manifest")
    return [SFTFile(folder / name, entry["category"]) for name, entry in sorted(manifest["files"].items())]


class _BadLine(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _BadLine("missing_content", f"{where} is not a string")
    if not value.strip():
        raise _BadLine("empty_content", f"{where} is empty")
    return value


def _chat_messages(turns: object, key: str) -> list[dict]:
    if not isinstance(turns, list):
        raise _BadLine("not_a_list", f"{key!r} must be a list of messages")
    if not turns:
        raise _BadLine("empty_messages", f"{key!r} is empty")
    messages = []
    for index, turn in enumerate(turns):
        where = f"{key}[{index}]"
        if not isinstance(turn, dict):
            raise _BadLine("not_an_object", f"{where} is not an object")
        role_key, content_key = ("role", "content") if "role" in turn or "content" in turn else ("from", "value")
        if role_key not in turn:
            raise _BadLine("missing_role", f"{where} has no 'role' (or ShareGPT 'from')")
        role = ROLE_NAMES.get(turn[role_key]) if isinstance(turn[role_key], str) else None
        if role is None:
            raise _BadLine("unknown_role", f"{where}: unknown role {turn[role_key]!r} "
                                           f"(known: {', '.join(sorted(ROLE_NAMES))})")
        messages.append({"role": role, "content": _text(turn.get(content_key), f"{where}.{content_key}")})
    if not any(m["role"] == "assistant" for m in messages):
        raise _BadLine("no_assistant", f"{key!r} has no assistant turn")
    return messages


def _instruction_messages(record: dict) -> list[dict]:
    instruction = _text(record.get("instruction"), "'instruction'")
    extra = record.get("input", "")
    if not isinstance(extra, str):
        raise _BadLine("missing_content", "'input' is not a string")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "user", "content": prompt},
                {"role": "assistant", "content": _text(record.get("output"), "'output'")}]
    if record.get("system"):
        messages.insert(0, {"role": "system", "content": _text(record["system"], "'system'")})
    return messages


def record_messages(record: object) -> list[dict]:
    """The ChatML messages of one parsed JSONL record, or _BadLine saying what is wrong."""
    if not isinstance(record, dict):
        raise _BadLine("not_an_object", "line is not a JSON object")
    for key in ("messages", "conversations"):
        if key in record:
            return _chat_messages(record[key], key)
    if "instruction" in record or "output" in record:
        return _instruction_messages(record)
    raise _BadLine("unknown_format", "no 'messages', 'conversations' or 'instruction'/'output' field")


def read_sft_file(source: SFTFile, counts: SFTCounts, strict: bool = False) -> Iterator[list[dict]]:
    """Messages of each good line of one file; bad lines are counted in `counts` (or raise)."""
    def bad(number: int, kind: str, message: str) -> None:
        line = f"{source.path}:{number}: {message}"
        if strict:
            raise UserError(line)
        counts.errors[kind] += 1
        if len(counts.error_lines) < MAX_LISTED_ERRORS:
            counts.error_lines.append(line)

    if not source.path.is_file():
        raise UserError(f"{source.path}: SFT file not found")
    for number, raw in enumerate(raw_lines(source.path), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad(number, "invalid_utf8", f"invalid UTF-8 ({exc.reason} at column {exc.start + 1})")
            continue
        if not line.strip():
            bad(number, "blank_line", "blank line")
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            bad(number, "bad_json", f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        try:
            messages = record_messages(record)
        except _BadLine as exc:
            bad(number, exc.kind, str(exc))
            continue
        counts.conversations += 1
        yield messages


def held_out_bucket(messages: list[dict]) -> int:
    """0-99 from a hash of the first user turn (whitespace-normalized): the split key."""
    prompt = next((m["content"] for m in messages if m["role"] == "user"), messages[0]["content"])
    key = " ".join(prompt.split()).lower().encode("utf-8")
    return int.from_bytes(hashlib.sha256(b"xmodel2-sft/" + key).digest()[:8], "big") % 100


def render(messages: list[dict], tokenizer=None) -> str:
    if tokenizer is not None:
        return tokenizer.apply_chat_template(messages)
    from xmodel2.tokenizer.chat import render_chat

    return render_chat(messages)


@dataclass
class PreparedSFT:
    """ChatML JSONL files ready for `xmodel2 prepare`: one per category, plus the held-out file."""

    folder: Path
    train_files: dict[str, Path]  # category -> file
    validation_file: Path | None
    counts: list[SFTCounts]

    @property
    def errors(self) -> int:
        return sum(sum(c.errors.values()) for c in self.counts)

    def summary(self) -> str:
        rows = []
        for c in self.counts:
            bad = sum(c.errors.values())
            detail = f", {bad} bad lines ({', '.join(f'{k} {v}' for k, v in sorted(c.errors.items()))})" if bad else ""
            rows.append(f"{c.path} [{c.category}]: {c.conversations} conversations{detail}")
            rows.extend(f"  {line}" for line in c.error_lines[:5])
        return "\n".join(rows)


def _request_digest(files: list[SFTFile], held_out_percent: int) -> str:
    digest = hashlib.sha256(f"sft-v1/{held_out_percent}".encode())
    for f in files:
        digest.update(f"{f.category}\0{f.path.resolve()}\0".encode())
        digest.update(hashlib.sha256(f.path.read_bytes()).digest())
    return digest.hexdigest()


def prepare_sft(files: list[SFTFile], out_dir: str | Path, held_out_percent: int = DEFAULT_HELD_OUT_PERCENT,
                strict: bool = False, tokenizer=None) -> PreparedSFT:
    """Write OUT/sft-<category>.jsonl (train) and OUT/sft-validation.jsonl as {"text", "category"}.

    The folder appears in one rename; preparing the same files again reuses it untouched.
    """
    out_dir = Path(out_dir)
    if not files:
        raise UserError("no SFT files given")
    if not 0 <= held_out_percent < 100:
        raise UserError(f"held_out_percent must be in [0, 100), got {held_out_percent}")
    for f in files:
        if not f.path.is_file():
            raise UserError(f"{f.path}: SFT file not found")
    digest = _request_digest(files, held_out_percent)
    if (out_dir / REPORT_FILE).is_file():
        report = read_json(out_dir / REPORT_FILE)
        if report.get("request") == digest:
            return _from_report(out_dir, report)

    all_counts = []
    with atomic_directory(out_dir, kind="sft") as tmp:
        handles: dict[str, object] = {}
        try:
            for source in files:
                counts = SFTCounts(str(source.path), source.category)
                all_counts.append(counts)
                for messages in read_sft_file(source, counts, strict):
                    split = "validation" if held_out_bucket(messages) < held_out_percent else source.category
                    name = VALIDATION_FILE if split == "validation" else f"sft-{split}.jsonl"
                    if name not in handles:
                        handles[name] = open(tmp / name, "w", encoding="utf-8")
                    record = {"text": render(messages, tokenizer), "category": source.category}
                    handles[name].write(json.dumps(record, ensure_ascii=False) + "\n")
        finally:
            for handle in handles.values():
                handle.close()
        report = {"request": digest, "held_out_percent": held_out_percent,
                  "files": [c.as_dict() for c in all_counts],
                  "outputs": sorted(handles)}
        atomic_write_json(tmp / REPORT_FILE, report)
    return _from_report(out_dir, report)


def _from_report(out_dir: Path, report: dict) -> PreparedSFT:
    outputs = set(report["outputs"])
    train = {c: out_dir / f"sft-{c}.jsonl" for c in CATEGORIES if f"sft-{c}.jsonl" in outputs}
    counts = []
    for entry in report["files"]:
        c = SFTCounts(entry["path"], entry["category"], entry["conversations"],
                      Counter(entry["errors"]), list(entry["error_lines"]))
        counts.append(c)
    validation = out_dir / VALIDATION_FILE if VALIDATION_FILE in outputs else None
    return PreparedSFT(out_dir, train, validation, counts)

