"""Reading final answers out of generated text, and the exact-match comparison.

GSM8K-style: a strict regex (the task's own answer sentence, e.g. "#### 42" or "So the answer is
42") and a flexible fallback (the last number in the text). Before comparing, both sides lose
every match of the task's `ignore` regexes (commas, "$", a trailing period), as lm-evaluation-
harness's exact_match with `regexes_to_ignore` does. MATH-style answers are compared after a
light LaTeX normalization (see `normalize_math`): close to, but simpler than, Minerva's rules.
"""

from __future__ import annotations

import re

from xmodel2.eval.tasks import AnswerRule

INVALID = "[invalid]"


def extract_strict(text: str, rule: AnswerRule) -> str:
    match = re.search(rule.strict, text)
    if not match:
        return INVALID
    groups = [g for g in match.groups() if g is not None]
    return (groups[0] if groups else match.group(0)).strip()


def extract_flexible(text: str, rule: AnswerRule) -> str:
    matches = re.findall(rule.flexible, text)
    if not matches:
        return INVALID
    last = matches[-1]
    if isinstance(last, tuple):
        last = next((g for g in last if g), "")
    return last.strip()


def exact_match(prediction: str, gold: str, rule: AnswerRule) -> bool:
    if rule.normalizer == "math":
        return prediction != INVALID and normalize_math(prediction) == normalize_math(gold)
    return _clean(prediction, rule) == _clean(gold, rule)


def _clean(text: str, rule: AnswerRule) -> str:
    for pattern in rule.ignore:
        text = re.sub(pattern, "", text)
    if rule.ignore_case:
        text = text.lower()
    return text.strip()


def last_boxed(text: str) -> str | None:
    """The contents of the last \\boxed{...} (braces balanced), or None."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    open_at = text.find("{", start)
    if open_at < 0:
        return None
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_at + 1:i]
    return None


def extract_math(text: str, rule: AnswerRule) -> str:
    """Minerva's answer sentence if present, else the last \\boxed{} answer."""
    answer = extract_strict(text, rule)
    if answer != INVALID:
        return answer
    boxed = last_boxed(text)
    return INVALID if boxed is None else boxed


_MATH_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "$", "\\displaystyle", "^\\circ",
              "^{\\circ}", "\\%", "%", " ")


def normalize_math(answer: str) -> str:
    answer = answer.strip()
    boxed = last_boxed(answer)
    if boxed is not None:
        answer = boxed
    answer = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", answer)
    for token in _MATH_DROP:
        answer = answer.replace(token, "")
    answer = answer.replace("dfrac", "frac").replace("tfrac", "frac")
    answer = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", answer)
    answer = answer.rstrip(".")
    if re.fullmatch(r"-?\d+\.0+", answer):
        answer = answer.split(".")[0]
    return answer
