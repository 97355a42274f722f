"""Tests for cordlite.judge.verify: final-answer extraction and equivalence, cases checkable by hand."""

from __future__ import annotations

from fractions import Fraction

import pytest

from cordlite.judge.verify import describe, extract_final_answer, has_final_answer, rule_verdict, same_final_answer

CHOICES = ["Paris", "Rome", "Oslo", "Bern"]


@pytest.mark.parametrize("response", [
    "I think the answer is (B) because Rome is the capital of Italy.",
    "Looking at the options, I pick B.",
    "(B)",
    "The correct option is B.",
    "Rome, of course.",
    "Answer: B. Rome",
])
def test_letter_in_prose(response: str):
    ans = extract_final_answer(response, CHOICES)
    assert (ans.kind, ans.value) == ("choice", "B")
    assert rule_verdict(response, "B", CHOICES) is True
    assert rule_verdict(response, "C", CHOICES) is False


@pytest.mark.parametrize("response, value", [
    ("the answer is 12", Fraction(12)),
    ("So, the final answer is 12.", Fraction(12)),
    ("3 * 4 = 12", Fraction(12)),
    ("0.5", Fraction(1, 2)),
    ("1/2", Fraction(1, 2)),
    ("$\\frac{1}{2}$", Fraction(1, 2)),
    ("\\frac{1}{2}", Fraction(1, 2)),
    ("\\boxed{\\frac{1}{2}}", Fraction(1, 2)),
    ("\\boxed{\\dfrac{3}{4}}", Fraction(3, 4)),
    ("The answer is $-\\frac{1}{2}$.", Fraction(-1, 2)),
    ("We get $y = \\frac{1}{2}$", Fraction(1, 2)),  # an equation answers its right-hand side
    ("\\boxed{12}", Fraction(12)),
])
def test_numbers_and_latex_fractions(response: str, value: Fraction):
    ans = extract_final_answer(response)
    assert (ans.kind, ans.value) == ("number", value)


@pytest.mark.parametrize("a, b", [
    ("0.5", "1/2"),
    ("$\\frac{1}{2}$", "0.5"),
    ("\\boxed{\\frac{1}{2}}", "The answer is 1/2."),
    ("The answer is 12", "12"),
    ("$\\frac{\\sqrt{2}}{2}$", "\\boxed{\\frac{1}{\\sqrt{2}}}"),  # symbolic, via math-verify
    ("The answer is $x^2+2x+1$", "$(x+1)^2$"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "0.7071067811865476"),  # irrational against its decimal
])
def test_equivalent(a: str, b: str):
    assert rule_verdict(a, b) is True
    assert rule_verdict(b, a) is True
    assert same_final_answer(a, b)


@pytest.mark.parametrize("a, b", [
    ("\\boxed{\\frac{1}{3}}", "0.5"),
    ("$\\pi$", "3.14"),  # 3.14 is not pi at the default tolerance
    ("The answer is $x^2$", "$(x+1)^2$"),
    ("the answer is 12", "13"),
])
def test_not_equivalent(a: str, b: str):
    assert rule_verdict(a, b) is False


def test_math_kind_keeps_symbolic_answers():
    ans = extract_final_answer("\\boxed{\\sqrt{2}}")
    assert ans.kind == "math" and ans.explicit and describe(ans) == "sqrt(2)"
    assert describe(extract_final_answer("0.5")) == "1/2"


def test_rules_cannot_decide_different_texts_or_kinds():
    assert rule_verdict("twelve", "12") is None  # text against number
    assert rule_verdict("the Eiffel Tower", "the tower in Paris") is None
    assert rule_verdict("The Eiffel Tower!", "eiffel tower") is True
    assert not same_final_answer("twelve", "12")


def test_no_final_answer_is_decided_false():
    assert rule_verdict("", "12") is False
    assert rule_verdict("Let me compute 3 * 4 = 12 and then", "12", truncated=True) is False
    assert rule_verdict("so the answer is 12 and to check", "12", truncated=True) is True
    assert not has_final_answer("So far 3 * 4 = 12", truncated=True)
    assert has_final_answer("So far 3 * 4 = 12", truncated=False)
    assert not has_final_answer("   ")
