"""What `xmodel2 eval` runs: benchmarks by name, plus perplexity, calibration, scaling law, HumanEval.

Task names besides benchmarks (see `registry`):
  wikitext        perplexity on the bundled Wikipedia test split (xmodel2/bundled/corpus/wiki-test.jsonl.gz)
  ppl:PATH        perplexity on a text file or a JSONL(.gz) file of {"text": ...}
  calibration     MMLU answer-letter calibration: ECE (10 and 15 bins), Brier, reliability PNG
  scaling_law     loss by token position on wiki-test, fit of L(t) = b + (t/c)^a, log-log PNG
  humaneval       pass@1, generated code run in an OS sandbox (`sandbox`); also on a file of completions

The agent tasks of `xmodel2 eval` (hotpotqa_react, fever_react) live in `xmodel2.agents`, which
builds on this package; nothing here depends on them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xmodel2.eval.metrics import Metric
from xmodel2.eval.scoring import Scorer

SPECIAL = ("wikitext", "calibration", "scaling_law", "humaneval")  # and ppl:PATH


@dataclass
class Settings:
    limit: int | None = None
    shots: int | None = None
    stride: int | None = None
    window: int | None = None
    scaling_length: int = 64
    plots: Path | None = None
    isolation: str | None = None  # humaneval: what generated code runs under, settled before the model loads


@dataclass
class Outcome:
    metrics: list[Metric] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # per task: timings, fits, plot paths


def check_task_names(specs: list[str]) -> None:
    """Fail before a model loads (or a branch trains) on a malformed task name or a missing task file."""
    from xmodel2.eval.registry import check_spec

    for spec in specs:
        if spec not in SPECIAL and not spec.startswith("ppl:"):
            check_spec(spec)


# The headline metric of each task kind, in the order looked for.
ACCURACY_METRICS = ("acc", "exact_match", "pass@1")
EVAL_BATCH_SIZE = 8  # `xmodel2 eval`'s default --batch-size


def score_in_memory(model, tokenizer, specs: list[str], limit: int | None,
                    batch_size: int = EVAL_BATCH_SIZE) -> tuple[Outcome, Scorer]:
    """Tasks scored on a model in memory exactly as `xmodel2 eval` scores them; the model is left
    in the training mode it was in."""
    scorer = Scorer(model, tokenizer, batch_size)
    outcome = Outcome()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for spec in specs:
                run_task(scorer, spec, Settings(limit), outcome)
    finally:
        model.train(was_training)
    return outcome, scorer


def headline_accuracies(metrics: list[Metric]) -> dict[str, float]:
    """Each task's first accuracy-like metric (ACCURACY_METRICS), by task."""
    per_task: dict[str, float] = {}
    for metric in metrics:
        if metric.metric in ACCURACY_METRICS and not math.isnan(metric.value):
            per_task.setdefault(metric.task, metric.value)
    return per_task


def task_accuracies(model, tokenizer, specs: list[str], limit: int | None) -> dict[str, float]:
    """The headline accuracy of each task on a model in memory: what a run's in-loop evaluation
    logs and what the ratio search scores a branch by."""
    outcome, _ = score_in_memory(model, tokenizer, specs, limit)
    return headline_accuracies(outcome.metrics)


def run_task(scorer: Scorer, spec: str, settings: Settings, outcome: Outcome) -> None:
    """Score task `spec` on the scorer's model (in memory), adding its metrics and details to `outcome`."""
    started = time.perf_counter()
    if spec == "wikitext" or spec.startswith("ppl:"):
        _perplexity(scorer, spec, settings, outcome)
    elif spec == "calibration":
        _calibration(scorer, settings, outcome)
    elif spec == "scaling_law":
        _scaling_law(scorer, settings, outcome)
    elif spec == "humaneval":
        from xmodel2.eval import humaneval

        metric, records = humaneval.evaluate(scorer.model, scorer.tokenizer, settings.isolation, settings.limit,
                                             scorer.batch_size)
        _humaneval_outcome(metric, records, settings, outcome)
    else:
        _benchmark(scorer, spec, settings, outcome)
    outcome.details.setdefault(spec, {})["seconds"] = round(time.perf_counter() - started, 3)


def score_completions(path: Path, settings: Settings, outcome: Outcome, allow_unsandboxed: bool) -> None:
    """HumanEval on completions made elsewhere (`xmodel2 eval --tasks humaneval --completions FILE`)."""
    from xmodel2.eval import humaneval

    started = time.perf_counter()
    metric, records, settings.isolation = humaneval.score_completions(path, allow_unsandboxed, settings.limit)
    _humaneval_outcome(metric, records, settings, outcome)
    outcome.details["humaneval"]["seconds"] = round(time.perf_counter() - started, 3)


def _humaneval_outcome(metric: Metric, records: list[dict], settings: Settings, outcome: Outcome) -> None:
    outcome.metrics.append(metric)
    outcome.details.setdefault("humaneval", {}).update(isolation=settings.isolation, completions=records)


def _benchmark(scorer: Scorer, spec: str, settings: Settings, outcome: Outcome) -> None:
    from xmodel2.eval.registry import load_task

    task = load_task(spec, settings.shots).limited(settings.limit)
    if task.kind == "multiple_choice":
        from xmodel2.eval.multiple_choice import choice_metrics, score_choices

        outcome.metrics += choice_metrics(task, score_choices(scorer, task.docs))
    else:
        from xmodel2.eval.generation_tasks import generate_answers, generation_metrics

        results = generate_answers(scorer.model, scorer.tokenizer, task, scorer.batch_size, scorer.add_bos)
        outcome.metrics += generation_metrics(task, results)
        outcome.details.setdefault(spec, {})["generations"] = [
            {"id": r.doc.doc_id, "gold": r.doc.answer, "text": r.text} for r in results]


def _wiki_texts() -> tuple[list[str], str]:
    from xmodel2.data.corpus import corpus_file
    from xmodel2.eval.perplexity import read_texts

    path = corpus_file("wiki-test")
    return read_texts(path), "xmodel2/bundled/corpus/wiki-test.jsonl.gz"


def _perplexity(scorer: Scorer, spec: str, settings: Settings, outcome: Outcome) -> None:
    from xmodel2.eval.perplexity import perplexity, read_texts

    if spec == "wikitext":
        texts, source = _wiki_texts()
    else:
        source = spec[len("ppl:"):]
        texts = read_texts(source)
    texts = texts[:settings.limit]
    result = perplexity(scorer, texts, settings.window, settings.stride)
    for name, value in (("token_perplexity", result.token_perplexity), ("word_perplexity", result.word_perplexity),
                        ("bits_per_byte", result.bits_per_byte)):
        outcome.metrics.append(Metric(spec, name, value, None, result.documents, 0, source))
    outcome.details.setdefault(spec, {}).update(tokens=result.tokens, words=result.words, bytes=result.bytes,
                                                window=settings.window or scorer.max_length,
                                                stride=settings.stride or settings.window or scorer.max_length)


def _calibration(scorer: Scorer, settings: Settings, outcome: Outcome) -> None:
    from xmodel2.eval.calibration import from_choice_results, reliability_diagram
    from xmodel2.eval.multiple_choice import score_choices
    from xmodel2.eval.registry import load_task

    task = load_task("mmlu", settings.shots).limited(settings.limit)
    calibration = from_choice_results(score_choices(scorer, task.docs))
    n = len(task.docs)
    for name, value in (("ece_10", calibration.ece(10)), ("ece_15", calibration.ece(15)),
                        ("brier", calibration.brier()), ("acc", float(calibration.correct.mean())),
                        ("mean_confidence", float(calibration.confidence.mean()))):
        outcome.metrics.append(Metric("calibration", name, value, None, n, task.shots, task.source))
    if settings.plots is not None:
        path = reliability_diagram(calibration, settings.plots / "calibration-reliability.png")
        outcome.details.setdefault("calibration", {})["plot"] = str(path)


def _scaling_law(scorer: Scorer, settings: Settings, outcome: Outcome) -> None:
    from xmodel2.eval.scaling_law import fit_law, loss_by_position, plot_fit

    texts, source = _wiki_texts()
    losses, documents = loss_by_position(scorer, texts[:settings.limit], settings.scaling_length)
    positions = np.arange(1, len(losses) + 1, dtype=float)
    fit = fit_law(positions, losses)
    for name in ("a", "b", "c", "r2"):
        outcome.metrics.append(Metric("scaling_law", name, getattr(fit, name), None, documents, 0, source))
    details = outcome.details.setdefault("scaling_law", {})
    details.update(fit=fit.to_dict(), loss_by_position=[float(x) for x in losses])
    if settings.plots is not None:
        details["plot"] = str(plot_fit(positions, losses, fit, settings.plots / "scaling-law.png",
                                       f"{documents} documents of ≥ {settings.scaling_length} tokens ({source})"))
