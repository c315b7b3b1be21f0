"""Multiple choice as the harness scores it: the choice with the highest summed log-likelihood wins.

`acc` compares raw sums; `acc_norm` divides each sum by the choice's character length first
(`norm_chars`). Partial-scoring tasks (Winogrande) report `acc` only, as the harness does.
"""

from __future__ import annotations

from dataclasses import dataclass

from xmodel2.eval.metrics import Metric, mean, mean_stderr
from xmodel2.eval.scoring import Scorer
from xmodel2.eval.tasks import ChoiceDoc, Task


@dataclass
class ChoiceResult:
    doc: ChoiceDoc
    loglikelihoods: list[float]

    @property
    def prediction(self) -> int:
        return _argmax(self.loglikelihoods)

    @property
    def prediction_norm(self) -> int:
        return _argmax([ll / max(1, n) for ll, n in zip(self.loglikelihoods, self.doc.norm_chars)])


def score_choices(scorer: Scorer, docs: list[ChoiceDoc]) -> list[ChoiceResult]:
    pairs = [(c, x) for doc in docs for c, x in zip(doc.contexts, doc.continuations)]
    scores = scorer.loglikelihood(pairs)
    results, start = [], 0
    for doc in docs:
        count = len(doc.contexts)
        results.append(ChoiceResult(doc, [ll for ll, _ in scores[start:start + count]]))
        start += count
    return results


def choice_metrics(task: Task, results: list[ChoiceResult]) -> list[Metric]:
    acc = [float(r.prediction == r.doc.gold) for r in results]
    metrics = [Metric(task.name, "acc", mean(acc), mean_stderr(acc), len(acc), task.shots, task.source)]
    if not task.partial:
        norm = [float(r.prediction_norm == r.doc.gold) for r in results]
        metrics.append(Metric(task.name, "acc_norm", mean(norm), mean_stderr(norm), len(norm),
                              task.shots, task.source))
    return metrics


def _argmax(values: list[float]) -> int:
    # first index on ties, like numpy.argmax in the harness
    return max(range(len(values)), key=lambda i: (values[i], -i))
