"""Scores for the agent tasks: HotpotQA exact match and F1, FEVER label accuracy.

Answers are normalised as HotpotQA's official evaluation does: lower case, punctuation removed,
the articles a / an / the removed, whitespace collapsed. F1 is over the normalised words, and a
yes / no / noanswer answer scores F1 only when it equals the gold answer exactly.
"""

from __future__ import annotations

import re
import string
from collections import Counter

FEVER_LABELS = ("SUPPORTS", "REFUTES", "NOT ENOUGH INFO")
_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction), normalize_answer(gold)
    if (predicted in ("yes", "no", "noanswer") or expected in ("yes", "no", "noanswer")) and predicted != expected:
        return 0.0
    predicted_words, expected_words = predicted.split(), expected.split()
    common = sum((Counter(predicted_words) & Counter(expected_words)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted_words), common / len(expected_words)
    return 2 * precision * recall / (precision + recall)


def fever_label(prediction: str) -> str | None:
    """The FEVER label the prediction names (after normalisation), or None."""
    normalized = normalize_answer(prediction)
    for label in FEVER_LABELS:
        if normalized == normalize_answer(label):
            return label
    return None


def fever_correct(prediction: str, gold: str) -> float:
    return float(fever_label(prediction) == gold)
