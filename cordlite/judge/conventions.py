"""Each benchmark's own scoring rule, for comparing base-model numbers with published ones.

`cordlite eval` scores an item whose manifest row names an `extraction` mode with that benchmark's
own rule instead of the judge. "cordlite" (the default) is the judge path (cordlite.judge.verify).

    convention_score("gsm8k", "... so she pays $18.", "18")     # ConventionScore(correct=True, ...)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cordlite.judge.verify import LETTERS, to_number

EXTRACTION_MODES = ("cordlite", "voicebench_mcq", "gsm8k", "mmau")


_GSM8K_MARKED = re.compile(r"####\s*(-?[$0-9.,]+)")


_LAST_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


_BARE_LETTER = re.compile(r"^\W*(?:(?:the\s+)?answer(?:\s+is)?\s*:?\s*)?\(?([A-J])\)?\W*$", re.IGNORECASE)


@dataclass(frozen=True)
class ConventionScore:
    correct: bool
    extracted: str | None  # what the benchmark's rule read from the response (None: nothing)
    guessed: bool = False  # nothing found, and the rule guessed (VoiceBench: a random letter)


def gsm8k_final_number(text: str) -> str | None:
    """GSM8K's final number: after "####" (the dataset's own answer format) when present, else the
    last number of the response (lm-evaluation-harness's "flexible-extract"); commas, "$" and a
    trailing "." dropped."""
    marked = _GSM8K_MARKED.findall(text)
    found = marked[-1] if marked else (_LAST_NUMBER.findall(text) or [None])[-1]
    if found is None:
        return None
    value = found.replace(",", "").replace("$", "").rstrip(".")
    return value if to_number(value) is not None else None


def mmau_string_match(answer: str, prediction: str, choices: list[str]) -> bool:
    """MMAU's official scorer (`string_match` in its evaluation.py): every word of the answer is in
    the prediction, and no word that only a wrong option has."""
    def words(t: str) -> set[str]:
        return set(re.findall(r"\b\w+\b", t.lower()))

    pred, ans = words(prediction), words(answer)
    if not pred:
        return False
    wrong = set().union(*(words(c) - ans for c in choices if words(c) != ans)) if choices else set()
    return ans <= pred and pred.isdisjoint(wrong)


def convention_score(mode: str, response: str, answer: str, choices: list[str] | None = None,
                     *, guess_key: str = "") -> ConventionScore:
    """Score `response` against the ground truth `answer` by the benchmark rule `mode`.

    voicebench_mcq  VoiceBench's letter extraction (cordlite.judge.voicebench); with no letter found
                    VoiceBench guesses one of A-D at random: here the guess is seeded by `guess_key`
                    (item id and view), so a rerun scores the same.
    gsm8k           `gsm8k_final_number`, equal as numbers to the answer (the number after ####).
    mmau            MMAU's string match of the option text; a reply that is only an option letter
                    ("B", "(B)", "Answer: B") is read as that option's text first, as lmms-eval does.
    """
    if mode == "voicebench_mcq":
        from cordlite.judge.voicebench import CHOICES, voicebench_letter

        letter = voicebench_letter(response)
        if letter is None:
            import random

            guess = random.Random(f"voicebench:{guess_key}").choice(CHOICES.upper())
            return ConventionScore(guess == answer.strip().upper(), guess, guessed=True)
        return ConventionScore(letter == answer.strip().upper(), letter)
    if mode == "gsm8k":
        got, want = gsm8k_final_number(response), to_number(answer.replace("$", ""))
        return ConventionScore(got is not None and want is not None and to_number(got) == want, got)
    if mode == "mmau":
        choices = choices or []
        truth = answer.strip()
        if len(truth) == 1 and truth.upper() in LETTERS[: len(choices)]:
            truth = choices[LETTERS.index(truth.upper())]  # manifests store the option letter
        m = _BARE_LETTER.match(response.strip())
        pred = response
        if m and m.group(1).upper() in LETTERS[: len(choices)]:
            pred = choices[LETTERS.index(m.group(1).upper())]
        return ConventionScore(mmau_string_match(truth, pred, choices), pred.strip()[:200] or None)
    raise ValueError(f"extraction mode {mode!r}; use one of {', '.join(EXTRACTION_MODES)}")
