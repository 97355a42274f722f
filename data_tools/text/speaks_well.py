"""Which written maths problems make good spoken questions, decided from the text alone. PURE.

The numina preset voices NuminaMath problems for CORD's audio view. Many of them do not work
as speech: Asymptote figure code, tables, references to a figure nobody hears, pages of LaTeX,
or simply more than Qwen2-Audio's 30 seconds of audio. `reject_reason` says why a problem is
left out (None: keep it); `estimate_seconds` predicts the clip length from the spoken text
before any synthesis, and the TTS job checks the real length afterwards.

    from data_tools.text.speaks_well import SpeakFilter, reject_reason
    reject_reason("Find $x$ if $2x + 3 = 7$.", SpeakFilter())          # None
    reject_reason("[asy] draw((0,0)--(1,1)); [/asy] Find the area.", SpeakFilter())  # "figure code ..."

Measured with espeak-ng at speed 1.0 on four NuminaMath-style problems (8 English voices): 13.5 to
17.3 spoken characters per second, 16 on long ones. Kokoro reads a little slower, so the estimate
assumes 13 characters per second at speed 1.0, scaled by the slowest speed a row can get.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from data_tools.text.latex_words import segments


@dataclass(frozen=True)
class SpeakFilter:
    max_seconds: float = 30.0
    """Qwen2-Audio's encoder window; the estimate must stay under `safety` times this."""
    safety: float = 0.95
    """Keep only problems estimated at most this fraction of max_seconds (the estimate is rough)."""
    chars_per_second: float = 13.0
    """Spoken characters per second at speed 1.0 (see the module docstring)."""
    slowest_speed: float = 0.9
    """The lowest speaking-rate factor the TTS job may draw (tts.speed low end)."""
    min_chars: int = 20
    """Shorter spoken texts are fragments, not problems."""
    max_math_chars: int = 200
    """LaTeX inside $...$ (all segments together) beyond this reads as a wall of symbols."""
    max_math_segment: int = 100
    """Longest single maths segment."""


_FIGURE_CODE = re.compile(r"\[asy\]|\\begin\{asy\}|\\includegraphics|!\[[^\]]*\]\(|<img\b|\\begin\{tikzpicture\}",
                          re.IGNORECASE)
_TABLE = re.compile(r"\\begin\{(?:tabular|array|table)\}|^\s*\|.*\|\s*$", re.MULTILINE)
_ENVIRONMENT = re.compile(r"\\begin\{(\w+\*?)\}")
_FIGURE_REF = re.compile(r"\b(?:figure|diagram|graph (?:below|above|shown)|shown (?:below|above|in the)|"
                         r"as shown|pictured|the picture|image below|table below|following table)\b", re.IGNORECASE)
_NON_ENGLISH = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\u0400-\u04ff]")
_URL = re.compile(r"https?://|www\.", re.IGNORECASE)


def estimate_seconds(spoken: str, f: SpeakFilter) -> float:
    """Predicted clip length of `spoken` at the slowest speed a row may get."""
    return len(spoken) / (f.chars_per_second * f.slowest_speed)


def reject_reason(problem: str, f: SpeakFilter, spoken: str | None = None) -> str | None:
    """Why `problem` does not make a good spoken question, or None. `spoken` is its speakable
    text (computed here when not given)."""
    if _FIGURE_CODE.search(problem):
        return "figure code or an image (Asymptote, TikZ, includegraphics)"
    if _TABLE.search(problem):
        return "a table"
    env = _ENVIRONMENT.search(problem)
    if env:
        return f"a LaTeX environment ({env.group(1)}) that does not read aloud"
    if _FIGURE_REF.search(problem):
        return "refers to a figure or table the listener cannot see"
    if _NON_ENGLISH.search(problem):
        return "non-English text"
    if _URL.search(problem):
        return "a URL"
    maths = [body for body, is_math in segments(problem) if is_math]
    if sum(len(m) for m in maths) > f.max_math_chars:
        return f"{sum(len(m) for m in maths)} characters of LaTeX (more than {f.max_math_chars})"
    if maths and max(len(m) for m in maths) > f.max_math_segment:
        return f"a {max(len(m) for m in maths)}-character formula (more than {f.max_math_segment})"
    if spoken is None:
        from data_tools.text.speakable import speakable

        spoken = speakable(problem)
    if len(spoken) < f.min_chars:
        return f"only {len(spoken)} spoken characters"
    seconds = estimate_seconds(spoken, f)
    if seconds > f.safety * f.max_seconds:
        return f"estimated {seconds:.0f} s of speech (limit {f.safety * f.max_seconds:.1f} s)"
    return None


def reason_kind(reason: str) -> str:
    """A short key for counting reasons ("estimated 41 s ..." -> "too_long")."""
    for key, kind in (("figure code", "figure_code"), ("refers to", "figure_reference"), ("table", "table"),
                      ("environment", "latex_environment"), ("non-English", "non_english"), ("URL", "url"),
                      ("characters of LaTeX", "long_latex"), ("formula", "long_latex"),
                      ("spoken characters", "too_short"), ("estimated", "too_long")):
        if key in reason:
            return kind
    return "other"
