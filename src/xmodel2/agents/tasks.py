"""The agent benchmarks of `xmodel2 eval`: `hotpotqa_react` and `fever_react` over offline Wikipedia.

Items are a seeded sample of ReAct's dev files: indexes 0..N-1 shuffled by `random.Random(seed)`,
the first `limit` taken (seed 233 and 500 items are what ReAct's notebooks use). Each episode is
one ReAct trajectory (`react.run_episode`) in a `WikiEnv` over the document store; every
trajectory goes to a JSONL traces file. Scores are labelled with the store they were searched in,
since a local store answers far fewer questions than live Wikipedia did for the paper.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from xmodel2.agents.docstore import DocStore, load_docstore
from xmodel2.agents.llm import Completer, ModelCompleter
from xmodel2.agents.metrics import exact_match, f1, fever_correct
from xmodel2.agents.react import MAX_STEPS, Trajectory, run_episode
from xmodel2.agents.reactdata import SOURCES, Item, load_items, load_prompt
from xmodel2.agents.wikienv import WikiEnv
from xmodel2.eval.metrics import Metric, mean, mean_stderr
from xmodel2.eval.runner import Outcome
from xmodel2.eval.scoring import Scorer
from xmodel2.fileio import atomic_write_text

REACT_TASKS = tuple(SOURCES)
SEED = 233
DEFAULT_LIMIT = 500


@dataclass
class ReactSettings:
    """Where `xmodel2 eval` finds ReAct's files and the document store, and where the traces go."""

    data: Path  # folder of ReAct's prompt and question files
    store: Path | None = None  # document store JSONL (file or folder); None: the bundled Wikipedia
    max_steps: int = MAX_STEPS
    traces: Path | None = None  # folder for trajectories: {traces_stem}{task}.traces.jsonl
    traces_stem: str = ""

    def traces_file(self, task: str) -> Path | None:
        return None if self.traces is None else self.traces / f"{self.traces_stem}{task}.traces.jsonl"


@dataclass
class ReactRun:
    metrics: list[Metric]
    records: list[dict]  # one per episode, as written to the traces file


@lru_cache(maxsize=1)
def store_for(path: str | None) -> DocStore:
    """The store at `path` (None: the bundled paragraphs), kept for the next task of the same run."""
    return load_docstore(None if path is None else [path])


def sample(items: list[Item], limit: int | None, seed: int = SEED) -> list[Item]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[:DEFAULT_LIMIT if limit is None else limit]]


def score(task: str, trajectory: Trajectory, item: Item) -> dict[str, float]:
    if task == "fever_react":
        return {"acc": fever_correct(trajectory.answer, item.answer)}
    return {"em": exact_match(trajectory.answer, item.answer), "f1": f1(trajectory.answer, item.answer)}


def score_react_task(scorer: Scorer, task: str, settings: ReactSettings, limit: int | None,
                     outcome: Outcome) -> None:
    """`xmodel2 eval`'s entry for a ReAct task: run it greedily on the scorer's model, add to `outcome`."""
    traces = settings.traces_file(task)
    completer = ModelCompleter(scorer.model, scorer.tokenizer, scorer.add_bos, context=scorer.max_length)
    store = store_for(None if settings.store is None else str(settings.store))
    started = time.perf_counter()
    run = run_react_task(task, completer, store, settings.data, limit, settings.max_steps, traces=traces)
    outcome.metrics += run.metrics
    outcome.details.setdefault(task, {}).update(
        traces=None if traces is None else str(traces), store=store.description,
        answers=[{"index": r["index"], "gold": r["gold"], "answer": r["answer"]} for r in run.records],
        seconds=round(time.perf_counter() - started, 3))


def run_react_task(task: str, completer: Completer, store: DocStore, data_dir: str | Path,
                   limit: int | None = None, max_steps: int = MAX_STEPS, seed: int = SEED,
                   traces: str | Path | None = None, show_progress: bool = True) -> ReactRun:
    source = SOURCES[task]
    prompt = load_prompt(data_dir, task)
    items = sample(load_items(data_dir, task), limit, seed)
    reward = fever_correct if task == "fever_react" else exact_match
    env = WikiEnv(store, prefix=source.prefix, reward=reward)
    records = []
    started = time.perf_counter()
    for n, item in enumerate(items, 1):
        began = time.perf_counter()
        trajectory = run_episode(completer, env, prompt, item.text, max_steps, gold=item.answer)
        records.append({"task": task, "index": item.index, "gold": item.answer, **trajectory.to_dict(),
                        **score(task, trajectory, item), "seconds": round(time.perf_counter() - began, 3)})
        if show_progress:
            elapsed = time.perf_counter() - started
            print(f"\r{task}: {n}/{len(items)} episodes, {elapsed / n:.1f} s each, "
                  f"ETA {elapsed / n * (len(items) - n):.0f} s", end="", file=sys.stderr, flush=True)
    if show_progress and items:
        print(file=sys.stderr)
    if traces is not None:
        atomic_write_text(traces, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return ReactRun(summarize(task, records, store, source.shots, seed), records)


def summarize(task: str, records: list[dict], store: DocStore, shots: int, seed: int) -> list[Metric]:
    n = len(records)
    source = f"{store.description}; ReAct {SOURCES[task].items_file}, seed {seed}"
    scores = ("acc",) if task == "fever_react" else ("em", "f1")
    metrics = [Metric(task, name, mean([r[name] for r in records]), mean_stderr([r[name] for r in records]),
                      n, shots, source) for name in scores]
    counts = {"malformed_actions": sum(r["invalid_actions"] for r in records),
              "format_errors": sum(r["format_errors"] for r in records),
              "step_limit_exits": sum(r["step_limit"] for r in records),
              "context_exits": sum(r["context_full"] for r in records)}
    metrics += [Metric(task, name, float(value), None, n, shots, source) for name, value in counts.items()]
    metrics.append(Metric(task, "mean_steps", mean([len(r["turns"]) for r in records]), None, n, shots, source))
    return metrics
