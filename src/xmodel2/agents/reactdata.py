"""ReAct's own data files, read from a folder the user gives (`--react-data DIR`).

The folder holds the files of the ReAct repository (ysymyth/ReAct, `data/` and `prompts/`):
  prompts_naive.json            few-shot trajectories; key `webthink_simple6` (HotpotQA, 6 shots)
  fever.json                    key `webthink_simple3` (FEVER, 3 shots, instruction included)
  hotpot_dev_v1_simplified.json HotpotQA dev: a list of {"question", "answer", "type"}
  paper_dev.jsonl               FEVER dev: one {"claim", "label", ...} per line
xmodel2 ships none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from xmodel2.errors import UserError

# ReAct prepends an instruction to the HotpotQA trajectories (its FEVER file carries its own);
# this is our wording of the same three actions.
HOTPOT_INSTRUCTION = """Answer a question by interleaving Thought, Action and Observation steps. A Thought reasons about the current situation; an Action is one of three kinds:
(1) Search[entity] looks the exact entity up on Wikipedia and returns the first paragraph of its page if there is one; otherwise it returns similar entities to search.
(2) Lookup[keyword] returns the next sentence containing the keyword in the current page.
(3) Finish[answer] returns the answer and ends the task.
Here are some examples.
"""


@dataclass(frozen=True)
class ReactSource:
    """Where one task's prompt and items come from, and how an item is introduced."""
    prompt_file: str
    prompt_key: str
    instruction: str
    shots: int
    items_file: str
    prefix: str  # "Question" or "Claim": the first observation is f"{prefix}: {text}"


SOURCES = {
    "hotpotqa_react": ReactSource("prompts_naive.json", "webthink_simple6", HOTPOT_INSTRUCTION, 6,
                                  "hotpot_dev_v1_simplified.json", "Question"),
    "fever_react": ReactSource("fever.json", "webthink_simple3", "", 3, "paper_dev.jsonl", "Claim"),
}


@dataclass(frozen=True)
class Item:
    index: int  # position in the data file, so a trace can be matched to the original item
    text: str
    answer: str


def require_file(folder: Path, name: str) -> Path:
    if not folder.is_dir():
        raise UserError(f"--react-data {folder}: folder not found (it holds ReAct's data and prompt files)")
    path = folder / name
    if not path.is_file():
        raise UserError(f"{path}: ReAct data file not found (copy it from ReAct's data/ or prompts/ folder)")
    return path


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None


def load_prompt(folder: str | Path, task: str) -> str:
    """The few-shot prompt that every episode of `task` starts with."""
    source = SOURCES[task]
    path = require_file(Path(folder), source.prompt_file)
    prompts = _read_json(path)
    if not isinstance(prompts, dict) or not isinstance(prompts.get(source.prompt_key), str):
        raise UserError(f"{path}: key {source.prompt_key!r} (a string of few-shot trajectories) not found")
    return source.instruction + prompts[source.prompt_key]


def load_items(folder: str | Path, task: str) -> list[Item]:
    source = SOURCES[task]
    path = require_file(Path(folder), source.items_file)
    if task == "hotpotqa_react":
        rows = _read_json(path)
        if not isinstance(rows, list):
            raise UserError(f"{path}: expected a JSON list of questions")
        return [_item(f"{path}: item {i}", i, row, "question", "answer") for i, row in enumerate(rows)]
    items = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise UserError(f"{path}:{number}: not valid JSON ({error.msg})") from None
                items.append(_item(f"{path}:{number}", len(items), row, "claim", "label"))
    return items


def _item(where: str, index: int, row, text_key: str, answer_key: str) -> Item:
    if not isinstance(row, dict) or not isinstance(row.get(text_key), str) or not isinstance(row.get(answer_key), str):
        raise UserError(f"{where}: needs string keys {text_key!r} and {answer_key!r}")
    return Item(index, row[text_key], row[answer_key])
