"""Generation tasks: greedy decoding until a stop string, then answer extraction and exact match.

The documents are decoded together, `batch_size` rows at a time with continuous batching
(`generate_many`): a finished answer's row goes to the next question at once.

Reports `exact_match` with the task's strict answer rule and `exact_match_flexible` with the
last-number fallback (GSM8K's two filters in lm-evaluation-harness); math tasks report one
`exact_match` over normalized LaTeX answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from xmodel2.eval.answers import exact_match, extract_flexible, extract_math, extract_strict
from xmodel2.eval.metrics import Metric, mean, mean_stderr
from xmodel2.eval.tasks import GenerationDoc, Task
from xmodel2.model.generate import (continuation_text, cut_at_stop, default_add_bos, generate_many,
                                    stop_ids_for, stop_string_check)


@dataclass
class GenerationResult:
    doc: GenerationDoc
    text: str


def generate_answers(model, tokenizer, task: Task, batch_size: int = 8,
                     add_bos: bool | None = None) -> list[GenerationResult]:
    add_bos = default_add_bos(tokenizer) if add_bos is None else add_bos
    docs: list[GenerationDoc] = task.docs
    prompts = [tokenizer.encode(doc.prompt, add_bos=add_bos) for doc in docs]
    # Longest first: rows that join a running batch are then no longer than those in it, which
    # keeps left padding short.
    order = sorted(range(len(docs)), key=lambda i: -len(prompts[i]))
    new = generate_many(model, [prompts[i] for i in order], task.max_new_tokens, batch_size=batch_size,
                        stop_ids=stop_ids_for(model, tokenizer),
                        should_stop=stop_string_check(tokenizer, task.stop))
    texts = [""] * len(docs)
    for i, ids in zip(order, new):
        texts[i] = cut_at_stop(continuation_text(tokenizer, prompts[i], ids), task.stop)
    return [GenerationResult(doc, text) for doc, text in zip(docs, texts)]


def generation_metrics(task: Task, results: list[GenerationResult]) -> list[Metric]:
    rule = task.answer_rule
    assert rule is not None, "a generation task needs an answer rule"
    if rule.normalizer == "math":
        scores = [float(exact_match(extract_math(r.text, rule), r.doc.answer, rule)) for r in results]
        return [Metric(task.name, "exact_match", mean(scores), mean_stderr(scores), len(scores),
                       task.shots, task.source)]
    strict = [float(exact_match(extract_strict(r.text, rule), r.doc.answer, rule)) for r in results]
    flexible = [float(exact_match(extract_flexible(r.text, rule), r.doc.answer, rule)) for r in results]
    return [Metric(task.name, "exact_match", mean(strict), mean_stderr(strict), len(strict), task.shots, task.source),
            Metric(task.name, "exact_match_flexible", mean(flexible), mean_stderr(flexible), len(flexible),
                   task.shots, task.source)]
