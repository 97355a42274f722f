"""Tests for cordlite.judge: final-answer extraction and rule-based equivalence, checkable by hand."""

from __future__ import annotations

from fractions import Fraction

import pytest

from cordlite.judge.rewards import rule_rewards
from cordlite.judge.verify import extract_final_answer, normalize_text, same_final_answer

CHOICES = ["Paris", "Rome", "Oslo", "Bern"]


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("response, reference", [
    ("The answer is 12.", "12"),
    ("3 * 4 = 12", "The answer is 12"),
    ("0.5", "1/2"),
    ("1,000", "1000"),
    ("50%", "0.5"),
    ("The final answer is 1,000.", "one thousand, that is 1000"),
    ("\\boxed{12}", "12"),
    ("So 7 + 5 = 12.", "The answer is 12."),
    ("-3", "\\boxed{-3}"),
    ("The answer is 12.0", "12"),
])
def test_same_number(response: str, reference: str):
    assert same_final_answer(response, reference)
    assert same_final_answer(reference, response)


@pytest.mark.parametrize("text, value", [
    ("12", Fraction(12)),
    ("The answer is 12.", Fraction(12)),
    ("1,000", Fraction(1000)),
    ("1/2", Fraction(1, 2)),
    ("50%", Fraction(1, 2)),
    ("0.5", Fraction(1, 2)),
    ("3 * 4 = 12", Fraction(12)),
    ("The answer is 12, since 3 * 4 = 12 and 24 / 2 = 12.", Fraction(12)),
])
def test_extract_number(text: str, value: Fraction):
    ans = extract_final_answer(text)
    assert ans is not None
    assert ans.kind == "number"
    assert ans.value == value


def test_explicit_flag():
    assert extract_final_answer("The answer is 12.").explicit
    assert extract_final_answer("\\boxed{12}").explicit
    assert not extract_final_answer("3 * 4 = 12").explicit
    assert not extract_final_answer("12").explicit


def test_explicit_answer_wins_over_later_numbers():
    # The stated answer, not the last number in the text.
    assert same_final_answer("The answer is 12. I checked it 3 times.", "12")
    assert not same_final_answer("The answer is 12. I checked it 3 times.", "3")


@pytest.mark.parametrize("response, reference", [
    ("The answer is -3", "-3"),
    ("The answer: -0.5.", "-1/2"),
])
def test_explicit_negative_answer(response: str, reference: str):
    assert same_final_answer(response, reference)


@pytest.mark.parametrize("response, reference, choices", [
    ("12 is the answer.", "12", None),
    ("Rome is the answer.", "B", CHOICES),
    ("To answer this, 3 * 4 = 12.", "12", None),
])
def test_word_answer_without_a_stated_answer(response: str, reference: str, choices):
    assert same_final_answer(response, reference, choices)


def test_negative_sign_is_not_dropped_the_other_way():
    # Guard against the false positive of the bug above, where it is visible as a wrong match.
    assert not same_final_answer("-3", "3")


@pytest.mark.parametrize("response, reference", [
    ("The answer is 13.", "12"),
    ("3 * 4 = 12", "The answer is 13"),
    ("0.5", "1/3"),
    ("1,000", "100"),
    ("50%", "50"),
])
def test_different_numbers(response: str, reference: str):
    assert not same_final_answer(response, reference)


def test_number_tolerance():
    assert same_final_answer("0.3333333", "1/3", number_tolerance=1e-6)
    assert not same_final_answer("0.33", "1/3", number_tolerance=1e-6)
    assert same_final_answer("0.33", "1/3", number_tolerance=0.05)


# --------------------------------------------------------------------------- choices


@pytest.mark.parametrize("response", ["I think (B).", "The answer is B.", "It is Rome.", "B. Rome", "(B)"])
def test_choice_b(response: str):
    ans = extract_final_answer(response, CHOICES)
    assert ans is not None
    assert ans.kind == "choice"
    assert ans.value == "B"
    assert same_final_answer(response, "The answer is (B) Rome.", CHOICES)


@pytest.mark.parametrize("response", ["I think (A).", "The answer is C.", "It is Bern.", "D. Bern"])
def test_other_choices_are_different(response: str):
    assert not same_final_answer(response, "The answer is B.", CHOICES)


def test_choice_text_and_letter_agree():
    assert same_final_answer("It is Oslo.", "(C)", CHOICES)
    assert same_final_answer("The answer is Paris.", "A. Paris", CHOICES)


def test_article_a_is_not_a_choice_letter():
    # Last letter in the text is taken; "A" here is the article, not option A.
    assert extract_final_answer("I think (B). A tricky one.", CHOICES).value == "B"


# --------------------------------------------------------------------------- text


def test_text_answers():
    assert normalize_text("The Eiffel Tower!") == "eiffel tower"
    assert same_final_answer("The answer is the Eiffel Tower.", "Eiffel tower")
    assert not same_final_answer("The answer is the Eiffel Tower.", "Big Ben")


def test_number_and_text_never_match():
    assert not same_final_answer("twelve", "12")


# --------------------------------------------------------------------------- no answer / truncation


@pytest.mark.parametrize("empty", ["", "   ", "\n"])
def test_empty_response_is_false(empty: str):
    assert extract_final_answer(empty) is None
    assert not same_final_answer(empty, "12")
    assert not same_final_answer(empty, "The answer is B.", CHOICES)


def test_empty_reference_is_false():
    assert not same_final_answer("12", "")


def test_truncated_without_explicit_answer_is_false():
    response = "Let me compute 3 * 4 = 12 and then check whether"  # last number 12 matches
    assert same_final_answer(response, "12")  # untruncated it would count
    assert not same_final_answer(response, "12", truncated=True)
    assert not same_final_answer("So far 3 * 4 = 12", "12", truncated=True)


def test_truncated_with_explicit_answer_is_true():
    response = "3 * 4 = 12, so the answer is 12 and to double check we multiply 4 by"
    assert same_final_answer(response, "12", truncated=True)
    assert same_final_answer("The answer is \\boxed{12} because 3 times", "12", truncated=True)
    assert not same_final_answer("so the answer is 13 and to double check we", "12", truncated=True)


# --------------------------------------------------------------------------- rewards


def test_rule_rewards():
    rewards = rule_rewards(
        ["The answer is 12.", "The answer is 13."],
        ["12", "12"],
        [None, None],
        [False, False],
    )
    assert rewards == [1.0, 0.0]
    assert all(type(r) is float for r in rewards)


def test_rule_rewards_mixed():
    rewards = rule_rewards(
        ["It is Rome.", "(A)", "3 * 4 = 12", "3 * 4 = 12", ""],
        ["B", "B", "12", "12", "12"],
        [CHOICES, CHOICES, None, None, None],
        [False, False, False, True, False],
    )
    assert rewards == [1.0, 0.0, 1.0, 0.0, 0.0]


def test_rule_rewards_lengths_must_match():
    with pytest.raises(ValueError):
        rule_rewards(["12", "12"], ["12"], [None, None], [False, False])
