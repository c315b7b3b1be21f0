"""Tasks from local JSONL files: one document per line, in one of three shapes.

Multiple choice (ARC, HellaSwag, PIQA, MMLU, ...)::

    {"query": "Question: Which gas do plants take in?\\nAnswer:", "choices": ["oxygen", "carbon dioxide"], "gold": 1}

  is scored as context = query, continuation = target_delimiter + choice (default " "); `acc_norm`
  divides by len(choice).

Partial scoring (Winogrande)::

    {"contexts": ["The trophy didn't fit because the trophy", "... because the suitcase"],
     "continuation": " was too big.", "gold": 0}

  scores the same continuation after each context.

Generation (GSM8K, MATH)::

    {"query": "Question: ...\\nAnswer:", "answer": "18", "target": "... #### 18"}

  is answered by greedy generation; `answer` is the gold final answer and `target` (default:
  `answer`) the text a few-shot example shows after the query.

Every line may carry "id" and "description" (text put before the few-shot examples). Options for
the whole file sit in an optional sibling `NAME.task.json` (defaults shown)::

    {"target_delimiter": " ", "fewshot_delimiter": "\\n\\n", "fewshot_seed": 1234,
     "stop": ["\\n\\n", "Question:"], "max_new_tokens": 256,
     "answer_regex": "#### (\\\\-?[0-9\\\\.\\\\,]+)", "flexible_regex": "(-?[$0-9.,]{2,})|(-?[0-9]+)",
     "ignore": [",", "\\\\$", "(?s).*#### ", "\\\\.$"], "ignore_case": true, "normalizer": "plain",
     "prompt_shots": 0}

`prompt_shots` counts solved examples already written into every query (reported as shots).

Few-shot examples (`--shots K`) come from a sibling `NAME.fewshot.jsonl` when there is one, else
from the same file without the document itself, drawn as lm-evaluation-harness draws them: one
`random.Random(fewshot_seed)` per task, `sample(pool, K + 1)` per document (K when the pool is a
separate file), the document itself removed, the first K kept, each shown as
query + target_delimiter + gold text and joined by fewshot_delimiter.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from xmodel2.errors import UserError
from xmodel2.fileio import iter_jsonl_objects
from xmodel2.eval.tasks import AnswerRule, ChoiceDoc, GenerationDoc, Task

DEFAULT_OPTIONS: dict[str, Any] = {
    "target_delimiter": " ",
    "fewshot_delimiter": "\n\n",
    "fewshot_seed": 1234,
    "stop": ["\n\n", "Question:"],
    "max_new_tokens": 256,
    "answer_regex": r"#### (\-?[0-9\.\,]+)",
    "flexible_regex": r"(-?[$0-9.,]{2,})|(-?[0-9]+)",
    "ignore": [",", r"\$", r"(?s).*#### ", r"\.$"],
    "ignore_case": True,
    "normalizer": "plain",
    "prompt_shots": 0,
}


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, row in iter_jsonl_objects(path, "task file"):
        row["_where"] = f"{path}:{number}"
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no documents")
    return rows


def task_options(path: Path) -> dict[str, Any]:
    options = dict(DEFAULT_OPTIONS)
    sidecar = _sibling(path, ".task.json")
    if sidecar.is_file():
        from xmodel2.fileio import read_json

        given = read_json(sidecar, "task options")
        if not isinstance(given, dict):
            raise UserError(f"{sidecar}: expected a JSON object")
        unknown = sorted(set(given) - set(DEFAULT_OPTIONS))
        if unknown:
            raise UserError(f"{sidecar}: unknown option {unknown[0]!r} (known: {', '.join(DEFAULT_OPTIONS)})")
        options.update(given)
    return options


def load_local_task(path: str | Path, shots: int = 0, name: str | None = None) -> Task:
    path = Path(path)
    rows = read_jsonl(path)
    options = task_options(path)
    fewshot_file = _sibling(path, ".fewshot.jsonl")
    pool = read_jsonl(fewshot_file) if fewshot_file.is_file() else rows
    kind = _kind(rows[0])
    for row in rows:
        if _kind(row) != kind:
            raise UserError(f"{row['_where']}: a {_kind(row)} document in a {kind} file")
    rng = random.Random(options["fewshot_seed"])
    docs = []
    for index, row in enumerate(rows):
        prefix = row.get("description", "") + _fewshot_prefix(row, pool, pool is rows, shots, rng, options)
        docs.append(_document(row, kind, prefix, options, str(row.get("id", index))))
    task_name = name or path.name.split(".")[0]
    if kind == "generate":
        rule = AnswerRule(options["answer_regex"], options["flexible_regex"], tuple(options["ignore"]),
                          bool(options["ignore_case"]), options["normalizer"])
        return Task(task_name, "generate", docs, shots + options["prompt_shots"], str(path), stop=list(options["stop"]),
                    max_new_tokens=int(options["max_new_tokens"]), answer_rule=rule)
    return Task(task_name, "multiple_choice", docs, shots + options["prompt_shots"], str(path), partial=kind == "partial")


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name.split(".")[0] + suffix)


def _kind(row: dict) -> str:
    if "contexts" in row:
        return "partial"
    if "choices" in row:
        return "choice"
    if "answer" in row:
        return "generate"
    raise UserError(f"{row['_where']}: a document needs 'choices', 'contexts' or 'answer'")


def _field(row: dict, key: str, kind: type) -> Any:
    value = row.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise UserError(f"{row['_where']}: key {key!r} must be a {kind.__name__}")
    return value


def _query(row: dict) -> str:
    return _field(row, "query" if "query" in row else "prompt", str)


def _example_text(row: dict, options: dict) -> str:
    """A solved example: the document followed by its gold answer."""
    kind = _kind(row)
    if kind == "partial":
        return _field(row, "contexts", list)[_field(row, "gold", int)] + _field(row, "continuation", str)
    if kind == "choice":
        return _query(row) + options["target_delimiter"] + str(_field(row, "choices", list)[_field(row, "gold", int)])
    return _query(row) + options["target_delimiter"] + str(row.get("target", row["answer"]))


def _fewshot_prefix(row: dict, pool: list[dict], same_file: bool, shots: int, rng: random.Random,
                    options: dict) -> str:
    if shots <= 0:
        return ""
    wanted = shots + 1 if same_file else shots
    if wanted > len(pool):
        raise UserError(f"{row['_where']}: {shots} shots asked but only {len(pool) - same_file} examples to draw from")
    drawn = [ex for ex in rng.sample(pool, wanted) if ex is not row][:shots]
    delimiter = options["fewshot_delimiter"]
    return delimiter.join(_example_text(ex, options) for ex in drawn) + delimiter


def _document(row: dict, kind: str, prefix: str, options: dict, doc_id: str) -> ChoiceDoc | GenerationDoc:
    if kind == "generate":
        return GenerationDoc(prefix + _query(row), str(row["answer"]), doc_id)
    gold = _field(row, "gold", int)
    if kind == "partial":
        contexts = [str(c) for c in _field(row, "contexts", list)]
        continuation = _field(row, "continuation", str)
        return _checked(row, lambda: ChoiceDoc([prefix + c for c in contexts], [continuation] * len(contexts),
                                               gold, [len(continuation)] * len(contexts), doc_id))
    choices = [str(c) for c in _field(row, "choices", list)]
    context = prefix + _query(row)
    return _checked(row, lambda: ChoiceDoc([context] * len(choices),
                                           [options["target_delimiter"] + c for c in choices],
                                           gold, [len(c) for c in choices], doc_id))


def _checked(row: dict, build):
    try:
        return build()
    except ValueError as exc:
        raise UserError(f"{row['_where']}: {exc}") from None
