"""Final-answer extraction and equivalence: the rule-based verifiers behind the judge and eval.

    from cordlite.judge.verify import extract_final_answer, rule_verdict, same_final_answer

A response is reduced to one canonical final answer, in this order:
  choice  an option letter ("(B)", "answer is B", "B. Rome") when the item has choices, or an
          option's text matched back to its letter;
  math    LaTeX ("\\frac{1}{2}", "$\\sqrt{2}$", "\\boxed{x^2}") parsed by the math-verify library;
          an expression that evaluates to a rational number becomes a `number`;
  number  the number after "answer is"/"=" or in \\boxed{}, else the last number in the text
          (commas, decimals, fractions and percentages understood);
  text    lower-cased, punctuation and articles removed.
The explicit answer ("answer is ...", \\boxed{...}) is preferred over the rest of the text.

`rule_verdict` says True/False when the rules are sure and None when they cannot decide (two
different texts, or kinds that differ such as "twelve" against "12"): those go to the LLM judge
in `judge.mode: rules_then_llm`. A truncated response with no explicit final answer is False:
it has no final answer (method doc, cordlite's choices).

Benchmark conventions (cordlite.judge.conventions.convention_score): evaluation rows that name an
`extraction` mode are scored by that benchmark's own rule instead (VoiceBench's multiple-choice
letters, GSM8K's final number, MMAU's string match), so base-model numbers compare with published
ones. Training rewards never use them.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from fractions import Fraction

LETTERS = "ABCDEFGHIJ"

_EXPLICIT = re.compile(
    r"\b(?:final answer|the answer|answer)\s*(?:is|:|=)\s*(?::|-(?![\d.]))?\s*(.+?)\s*(?:[.\n]\s|[.\n]?$)",
    re.IGNORECASE,
)
_BOXED = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}[^{}]*)*)\}")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*-?\d+(?:\.\d+)?)?%?|-?\.\d+")
_LETTER = re.compile(r"(?<![A-Za-z])\(?([A-J])\)?(?![A-Za-z])")
# Outside an explicit answer, a bare capital followed by a lower-case word is a word ("A tricky one").
_LETTER_LOOSE_TEXT = re.compile(r"\(([A-J])\)|(?<![A-Za-z(])([A-J])(?![A-Za-z)])(?!\s+[a-z])")
# LaTeX commands, inline math and powers send a span to math-verify; plain numbers never do
# (its percent and thousands handling differs from ours, and Fractions are exact).
_LATEX = re.compile(r"\\[A-Za-z]+|\$[^$]*\$|\^|\\\(|\\\[")


@dataclass(frozen=True)
class FinalAnswer:
    kind: str  # "choice" | "number" | "math" | "text"
    value: object  # letter str, Fraction, sympy expression, or normalised str
    explicit: bool  # stated with "answer is" / \boxed{}


def to_number(text: str) -> Fraction | None:
    t = text.strip().replace(",", "").replace(" ", "")
    pct = t.endswith("%")
    t = t.rstrip("%")
    try:
        if "/" in t:
            num, den = t.split("/", 1)
            val = Fraction(num) / Fraction(den)
        else:
            val = Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None
    return val / 100 if pct else val


def normalize_text(text: str) -> str:
    t = text.lower().strip()
    t = re.sub(r"[^\w\s]", " ", t)
    t = re.sub(r"\b(a|an|the)\b", " ", t)
    return " ".join(t.split())


def _explicit_span(text: str) -> str | None:
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1]
    found = _EXPLICIT.findall(text)
    return found[-1] if found else None


def _timeout() -> int | None:
    # math-verify bounds its sympy work with SIGALRM, which only the main thread may use.
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse_math(span: str, explicit: bool):
    """sympy expression of a LaTeX span via math-verify, or None when it finds none."""
    from math_verify import parse

    text = f"${span}$" if explicit and "$" not in span else span
    try:
        found = parse(text, parsing_timeout=_timeout())
    except Exception:  # math-verify raises on pathological input; the span is then not math
        return None
    if not found:
        return None
    expr = found[0]
    import sympy

    if isinstance(expr, sympy.Eq):
        expr = expr.rhs  # "x = 1/2" and "3^2 = 9": the right-hand side is the stated answer
    return expr


def _math_answer(expr, explicit: bool) -> FinalAnswer:
    import sympy

    if isinstance(expr, sympy.Basic) and expr.is_number:
        value = expr.doit()
        if value.is_Rational:
            return FinalAnswer("number", Fraction(int(value.p), int(value.q)), explicit)
        if value.is_Float:
            return FinalAnswer("number", Fraction(str(value)), explicit)
    return FinalAnswer("math", expr, explicit)


def extract_final_answer(text: str, choices: list[str] | None = None) -> FinalAnswer | None:
    """Canonical final answer of a response, or None when it has none."""
    text = text.strip()
    if not text:
        return None
    span = _explicit_span(text)
    explicit = span is not None
    scope = span if explicit else text
    if choices:
        letters = LETTERS[: len(choices)]
        hits = _LETTER.findall(scope) if explicit else [x or y for x, y in _LETTER_LOOSE_TEXT.findall(scope)]
        found = [m for m in hits if m in letters]
        if found:
            return FinalAnswer("choice", found[-1] if not explicit else found[0], explicit)
        norm_scope = normalize_text(scope)
        # Option text quoted back: pick the option whose text appears last in the response.
        best, pos = None, -1
        for i, c in enumerate(choices):
            nc = normalize_text(c)
            at = norm_scope.rfind(nc) if nc else -1
            if at > pos:
                best, pos = LETTERS[i], at
        if best is not None:
            return FinalAnswer("choice", best, explicit)
    if _LATEX.search(scope):
        expr = _parse_math(scope, explicit)
        if expr is not None:
            return _math_answer(expr, explicit)
    numbers = _NUMBER.findall(scope)
    if numbers:
        value = to_number(numbers[0] if explicit else numbers[-1])
        if value is not None:
            return FinalAnswer("number", value, explicit)
    norm = normalize_text(scope)
    return FinalAnswer("text", norm, explicit) if norm else None


def _math_equal(a: FinalAnswer, b: FinalAnswer) -> bool:
    import sympy
    from math_verify import verify

    def expr(x: FinalAnswer):
        if x.kind == "number":
            return sympy.Rational(x.value.numerator, x.value.denominator)  # type: ignore[union-attr]
        return x.value

    try:
        return bool(verify(expr(b), expr(a), timeout_seconds=_timeout()))
    except Exception:  # an expression sympy cannot compare is not a match
        return False


def answers_equal(a: FinalAnswer, b: FinalAnswer, number_tolerance: float = 1e-6) -> bool | None:
    """True/False when two extracted answers can be compared, None when rules cannot tell."""
    if a.kind == "number" and b.kind == "number":
        x, y = float(a.value), float(b.value)  # type: ignore[arg-type]
        return abs(x - y) <= number_tolerance * max(1.0, abs(x), abs(y))
    if {a.kind, b.kind} == {"number", "math"}:
        num, expr = (a, b) if a.kind == "number" else (b, a)
        if getattr(expr.value, "is_number", False):  # sqrt(2)/2 against 0.70710678: compare values
            try:
                x, y = float(num.value), float(expr.value.evalf())  # type: ignore[arg-type, union-attr]
            except (TypeError, ValueError):  # complex or undefined
                return False
            return abs(x - y) <= number_tolerance * max(1.0, abs(x), abs(y))
    if {a.kind, b.kind} <= {"number", "math"}:
        return _math_equal(a, b)
    if a.kind != b.kind:
        return None  # "twelve" against "12", an option letter against free text
    if a.kind == "text" and a.value != b.value:
        return None  # "Eiffel Tower" and "the tower in Paris" may still agree
    return a.value == b.value


def rule_verdict(
    response: str,
    reference: str,
    choices: list[str] | None = None,
    *,
    truncated: bool = False,
    number_tolerance: float = 1e-6,
) -> bool | None:
    """Does `response` reach the final answer of `reference`? None = the rules cannot decide."""
    a = extract_final_answer(response, choices)
    if a is None or (truncated and not a.explicit):
        return False  # no final answer
    b = extract_final_answer(reference, choices)
    if b is None:
        return False  # an empty reference agrees with nothing
    return answers_equal(a, b, number_tolerance)


def has_final_answer(response: str, choices: list[str] | None = None, truncated: bool = False) -> bool:
    """False for an empty response and for a truncated one without an explicit answer."""
    a = extract_final_answer(response, choices)
    return a is not None and (a.explicit or not truncated)


def same_final_answer(
    response: str,
    reference: str,
    choices: list[str] | None = None,
    *,
    truncated: bool = False,
    number_tolerance: float = 1e-6,
) -> bool:
    """True only when the rules are sure `response` reaches the same final answer as `reference`."""
    return rule_verdict(response, reference, choices, truncated=truncated, number_tolerance=number_tolerance) is True


def describe(answer: FinalAnswer | None) -> str | None:
    """Short printable form of an extracted answer (for responses.jsonl)."""
    if answer is None:
        return None
    if answer.kind == "number":
        v: Fraction = answer.value  # type: ignore[assignment]
        return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"
    return str(answer.value)
