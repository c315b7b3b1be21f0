"""Answer extraction and exact match for GSM8K-style and MATH-style generation tasks."""

from xmodel2.eval.answers import (INVALID, exact_match, extract_flexible, extract_math, extract_strict,
                                  last_boxed, normalize_math)
from xmodel2.eval.olmo_tasks import GSM8K_RULE, MATH_RULE
from xmodel2.eval.tasks import AnswerRule

HARNESS_GSM8K = AnswerRule(strict=r"#### (\-?[0-9\.\,]+)", ignore=(",", r"\$", r"(?s).*#### ", r"\.$"))


def test_gsm8k_strict_regex_reads_the_hash_answer():
    text = "She sells 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18"
    assert extract_strict(text, HARNESS_GSM8K) == "18"
    assert exact_match(extract_strict(text, HARNESS_GSM8K), "18", HARNESS_GSM8K)
    assert extract_strict("the answer is 18", HARNESS_GSM8K) == INVALID
    assert not exact_match(INVALID, "18", HARNESS_GSM8K)


def test_gsm8k_ignores_commas_dollars_and_final_period():
    assert extract_strict("So the answer is 1,234.", GSM8K_RULE) == "1,234."
    assert exact_match("1,234.", "1234", GSM8K_RULE)
    assert exact_match("$5", "5", GSM8K_RULE)
    assert not exact_match("12", "1234", GSM8K_RULE)


def test_flexible_extract_takes_the_last_number():
    text = "First 3 + 4 = 7, then 7 * 2 = 14 apples"
    assert extract_flexible(text, GSM8K_RULE) == "14"
    assert extract_flexible("no numbers here", GSM8K_RULE) == INVALID
    assert extract_flexible("owes -5 dollars", GSM8K_RULE) == "-5"


def test_math_answers_compare_after_normalization():
    text = "So x = 3.\nFinal Answer: The final answer is $\\frac{1}{2}$. I hope it is correct."
    assert extract_math(text, MATH_RULE) == "$\\frac{1}{2}$"
    assert exact_match(extract_math(text, MATH_RULE), "\\dfrac12", MATH_RULE)
    assert last_boxed("a \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)} b") == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert normalize_math("\\boxed{10^\\circ}") == "10"
    assert normalize_math("\\text{(C)}") == "(C)"
    assert not exact_match("\\frac{1}{3}", "\\frac{1}{2}", MATH_RULE)
