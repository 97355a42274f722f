"""Where a testbed answer goes wrong: hearing the problem, or reasoning about it. PURE.

    from cordlite.testbed.errors import error_kind, error_counts
    error_kind("7 + 5 = 12. 12 - 3 = 9. The answer is 9.", "7 + 5 = 12. 12 - 3 = 9. The answer is 9.")  # "right"

Every testbed answer is a chain "a op b = c. ... The answer is N." whose operands (a, each b) and
operations are read off the question. A wrong answer is
  operands  the chain starts from other numbers or operations than the question's: the problem was
            misread (from audio: misheard); no later step can repair it
  steps     the operands and operations are the question's, but a result or the final answer is
            wrong: a reasoning error along the chain, the kind exposure bias compounds
  format    no chain at all
With the hearing probe (cordlite.testbed.evaluate.hearing_probe: the audio view transcribes the
clip itself), `hearing_split` separates the wrong answers whose clip the audio view heard right
(its transcript states the same problem) from those it misheard.
This split is the testbed's evidence of what kind of gap a method is closing (docs/testbed.md).
"""

from __future__ import annotations

import re

from cordlite.testbed.task import final_answer

_STEP = re.compile(r"(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)\.")
KINDS = ("right", "operands", "steps", "format")


def _reading(chain: str) -> tuple[list[str], list[str]] | None:
    steps = _STEP.findall(chain)
    if not steps:
        return None
    return [steps[0][0]] + [b for _, _, b, _ in steps], [op for _, op, _, _ in steps]


def error_kind(response: str, reference: str) -> str:
    """'right', 'operands', 'steps' or 'format' for one response against the reference chain."""
    if final_answer(response) is not None and final_answer(response) == final_answer(reference):
        return "right"
    got, want = _reading(response), _reading(reference)
    if got is None:
        return "format"
    return "steps" if want is not None and got == want else "operands"


def error_counts(rows: list[dict], references: dict[str, str], view: str = "audio") -> dict[str, int]:
    """Counts of each kind over evaluation rows (id, view, response) of one view."""
    counts = dict.fromkeys(KINDS, 0)
    for r in rows:
        if r["view"] == view:
            counts[error_kind(r["response"], references[r["id"]])] += 1
    return counts


def heard_problem(transcript: str, question: str) -> bool:
    """The audio view's own transcript of a clip states the question's problem: the same start
    value, operations and operands (names, friends and objects may differ)."""
    from cordlite.testbed.task import parse_problem

    return parse_problem(transcript) == parse_problem(question)


def hearing_split(rows: list[dict], heard: dict[str, bool], view: str = "audio") -> dict[str, int]:
    """Wrong answers of one view split by what the hearing probe heard for the same clip:
    `misheard` (its transcript states another problem) or `heard` (it states this problem, so the
    error is in the reasoning over it), with `right` for the answers that are right."""
    out = {"right": 0, "misheard": 0, "heard": 0}
    for r in rows:
        if r["view"] == view:
            out["right" if r["correct"] else ("heard" if heard[r["id"]] else "misheard")] += 1
    return out
