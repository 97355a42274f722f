"""Benchmark answer rules (cordlite.judge.conventions.convention_score) by hand, and the eval summary of a
manifest with an audio-only subset (MMAU), from hand-made response rows."""

from __future__ import annotations

import pytest

from cordlite.eval.summary import baseline_report, summarize
from cordlite.judge.conventions import EXTRACTION_MODES, convention_score, gsm8k_final_number, mmau_string_match
from cordlite.judge.voicebench import voicebench_letter

# --------------------------------------------------------------------------- VoiceBench


@pytest.mark.parametrize("response, letter", [
    ("B", "B"),                                   # the whole reply is a letter
    ("c) Paris", "C"),                            # starts with a letter and ")"
    ("The answer is D.", "D"),                    # "the answer is @"
    ("The correct answer is (C) Paris.", "C"),    # "is (@)"
    ("I would choose option B because ...", "B"),
    ("**Answer: A**", "A"),                       # "answer: @"
    ("答案是C", "C"),                              # Chinese phrasing
    ("<1>b. carbon dioxide", "B"),                # a leading <1> tag is dropped
    ("The answer is about plants.", "A"),         # VoiceBench's substring rule: "the answer is a" matches
    ("Plants absorb carbon dioxide", None),       # no letter anywhere
    ("The answer is E.", None),                   # only a-d are tried
])
def test_voicebench_letters(response, letter):
    assert voicebench_letter(response) == letter


def test_voicebench_phrase_order_decides_between_two_letters():
    # "the answer is @" comes before the catch-all " @." in VoiceBench's list: C, although " a." is earlier in the text.
    assert voicebench_letter("Not option a. The answer is c") == "C"


def test_voicebench_guess_is_seeded_and_counted():
    first = convention_score("voicebench_mcq", "no idea", "B", guess_key="q1:audio")
    again = convention_score("voicebench_mcq", "no idea", "B", guess_key="q1:audio")
    assert first == again and first.guessed and first.extracted in "ABCD"
    assert first.correct == (first.extracted == "B")
    found = convention_score("voicebench_mcq", "The answer is B.", "b")
    assert found.correct and not found.guessed and found.extracted == "B"


# --------------------------------------------------------------------------- GSM8K


@pytest.mark.parametrize("response, number", [
    ("She pays 3 * 4 = 12 dollars.\n#### 12", "12"),       # GSM8K's own format wins
    ("#### 1,234\nThat is 5 more than before.", "1234"),
    ("So the total is $1,250.50.", "1250.50"),              # else the last number
    ("Thus the answer is 72.", "72"),
    ("The answer is -3", "-3"),
    ("No number here.", None),
])
def test_gsm8k_final_number(response, number):
    assert gsm8k_final_number(response) == number


def test_gsm8k_compares_numbers():
    assert convention_score("gsm8k", "It costs 18.0 dollars.", "18").correct
    assert not convention_score("gsm8k", "18 apples, then 20 more", "18").correct  # the last number counts
    assert convention_score("gsm8k", "It is 2,400.", "2400").extracted == "2400"


# --------------------------------------------------------------------------- MMAU


def test_mmau_string_match_by_hand():
    choices = ["Man", "Woman", "Child", "Robot"]
    assert mmau_string_match("Man", "The speaker is a man.", choices)
    assert not mmau_string_match("Man", "A man and a woman.", choices)  # "woman" belongs only to a wrong option
    assert not mmau_string_match("Woman", "man", choices)
    # Shared words do not count against: "car" is in the answer and in a wrong option.
    assert mmau_string_match("Car door", "a car door", ["Car door", "House door", "Car horn"])


def test_mmau_reads_a_bare_letter_as_its_option():
    choices = ["Piano", "Guitar", "Violin", "Drums"]
    assert convention_score("mmau", "C", "C", choices).correct                       # letter answer, letter truth
    assert convention_score("mmau", "(C)", "Violin", choices).extracted == "Violin"
    assert convention_score("mmau", "Answer: C.", "C", choices).correct
    assert not convention_score("mmau", "B", "C", choices).correct
    assert convention_score("mmau", "It sounds like a violin.", "C", choices).correct


def test_unknown_mode_is_refused():
    assert EXTRACTION_MODES == ("cordlite", "voicebench_mcq", "gsm8k", "mmau")
    with pytest.raises(ValueError, match="use one of cordlite, voicebench_mcq"):
        convention_score("mmlu", "A", "A")


# --------------------------------------------------------------------------- eval summary with an audio-only subset


SETTINGS = {"model": "m", "adapter": None, "manifest": "x.jsonl", "subset_field": "source", "temperature": 0.0,
            "top_p": 1.0, "max_new_tokens": 8, "seed": 0, "batch_size": 2, "quantization": "none", "instruction": "",
            "system_prompt": None, "judge": "rules", "judge_model": "self"}


def _row(i, modality, correct, by="rules"):
    return {"id": i, "modality": modality, "correct": correct, "judged_by": by, "truncated": False,
            "has_final_answer": True}


def _summary(audio: dict[str, bool]) -> dict:
    # mmsu: 2 items with both views; mmau: 2 audio-only items.
    rows = [_row("q1", "text", True), _row("q2", "text", True), _row("q1", "audio", audio["q1"]),
            _row("q2", "audio", audio["q2"]), _row("m1", "audio", audio["m1"], "mmau"),
            _row("m2", "audio", audio["m2"], "mmau")]
    return summarize(rows, {"q1": "mmsu", "q2": "mmsu", "m1": "mmau", "m2": "mmau"}, SETTINGS)


def test_audio_only_subsets_report_audio_accuracy_and_stay_out_of_the_gap():
    s = _summary({"q1": True, "q2": False, "m1": True, "m2": False})
    assert s["subsets"]["mmau"] == {"n": 2, "text_n": 0, "text_correct": 0, "audio_correct": 1, "text_acc": None,
                                    "audio_acc": 50.0, "gap": None}
    assert s["subsets"]["mmsu"]["gap"] == 50.0 and s["audio_only_subsets"] == ["mmau"]
    # All items: text 2/2, audio 2/4; the gap only where both views exist: 100 - 50.
    assert (s["text_acc"], s["audio_acc"], s["gap"]) == (100.0, 50.0, 50.0)
    assert s["average_over_subsets"] == {"text_acc": 100.0, "audio_acc": 50.0, "gap": 50.0}
    assert s["judge"]["by_benchmark_rule"] == {"mmau": 2}

    method = _summary({"q1": True, "q2": True, "m1": True, "m2": True})
    b = baseline_report(s, method, "base/summary.json")
    # mmsu: gap 50 -> 0: a 100% reduction; mmau is reported beside it, not averaged in.
    assert b["benchmarks"] == ["mmsu"] and b["gap_reduction"] == 1.0
    assert b["audio_only"] == {"mmau": {"base_audio_acc": 50.0, "method_audio_acc": 100.0}} and b["warnings"] == []
