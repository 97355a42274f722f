"""Turn question text into words a TTS engine reads correctly (pure functions, no I/O).

TTS engines read written maths badly: espeak-ng says "3-4" as "three dash four", "1/2" as
"one slash two", "$5" as "dollar five" and "x^2" as "x two"; MMS-TTS VITS models have no
digits in their vocabulary at all. `speakable(text)` rewrites, in order:

1. Unicode forms: superscripts (x² -> x^2), vulgar fractions (½ -> 1/2), minus signs.
2. Math segments ($...$, $$...$$, \\(...\\), \\[...\\]) are told apart from prose, so that
   "-" is "minus" in maths but a hyphen in "well-known".
3. Simple LaTeX: \\frac, \\sqrt, \\binom, powers and subscripts, \\text-like wrappers,
   Greek letters, relations, \\sum/\\int limits, \\left/\\right and spacing.
4. Tokens: numbers (1,234.5 -> "one thousand two hundred thirty four point five"),
   ordinals, fractions, currency, percent, degrees, units after numbers, operators.

The original text stays the teacher's text view; only the synthesised text is rewritten.
Try it: ``cordlite data speak 'Solve $x^2 - 5x + 6 = 0$.'``
"""

from __future__ import annotations

import re
import unicodedata

from data_tools.text.latex_words import PAUSE, absolute_values, latex_to_words, segments
from data_tools.text.number_words import decimal_to_words, fraction_to_words, number_to_words, ordinal_to_words

__all__ = ["speakable", "number_to_words", "ordinal_to_words", "fraction_to_words", "decimal_to_words"]

# --------------------------------------------------------------------------- unicode

_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺ⁿ", "0123456789-+n")
_VULGAR = {"½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4", "⅕": "1/5", "⅖": "2/5",
           "⅗": "3/5", "⅘": "4/5", "⅙": "1/6", "⅚": "5/6", "⅛": "1/8", "⅜": "3/8", "⅝": "5/8",
           "⅞": "7/8"}
_UNICODE_WORDS = {
    "π": " pi ", "θ": " theta ", "α": " alpha ", "β": " beta ", "γ": " gamma ", "δ": " delta ",
    "Δ": " delta ", "λ": " lambda ", "μ": " mu ", "σ": " sigma ", "φ": " phi ", "ω": " omega ",
    "√": " the square root of ", "∞": " infinity ", "∠": " angle ", "△": " triangle ",
    "→": " to ", "∈": " in ", "∪": " union ", "∩": " intersection ", "⊂": " is a subset of ",
    "∥": " is parallel to ", "⊥": " is perpendicular to ", "≅": " is congruent to ",
    "≡": " is congruent to ", "∼": " is similar to ", "∑": " the sum of ", "…": " and so on ",
}


def _normalise_unicode(text: str) -> str:
    text = re.sub(r"[⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺ⁿ]+", lambda m: "^{" + m.group().translate(_SUPERSCRIPTS) + "}", text)
    # "2½" is "two and a half": the digit run and the fraction must not merge into "21/2".
    text = re.sub(r"(\d)([½⅓⅔¼¾⅕⅖⅗⅘⅙⅚⅛⅜⅝⅞])", lambda m: f"{m.group(1)} and {_VULGAR[m.group(2)]}", text)
    text = re.sub(r"[½⅓⅔¼¾⅕⅖⅗⅘⅙⅚⅛⅜⅝⅞]", lambda m: f" {_VULGAR[m.group()]} ", text)
    text = text.replace("\u2212", "-").replace("\u2044", "/").replace("\u00a0", " ")
    # Greek letters are letters to the tokenizer; name them before it sees "πr" as one word.
    text = re.sub("|".join(map(re.escape, _UNICODE_WORDS)), lambda m: _UNICODE_WORDS[m.group()], text)
    # NFKC folds full-width digits, ligatures and compatibility forms into plain ASCII.
    return unicodedata.normalize("NFKC", text)


# A clock time: "3:45", "10:05 pm", "12:00 a.m." (hours 0-23, two-digit minutes). "3:4" (a ratio)
# and "1:2:3" are left to the symbol rules.
_CLOCK = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])(\s*[aApP](?:\.\s?[mM]\.|\s?[mM])(?![^\W\d_]))?")


def _clock_words(m: re.Match) -> str:
    """ "3:45" -> "three forty five", "10:05" -> "ten oh five", "7:00" -> "seven o'clock", "pm" -> "p m"."""
    hour, minute = int(m.group(1)), int(m.group(2))
    if minute == 0:
        spoken = f"{number_to_words(hour)} o'clock" if not m.group(3) else number_to_words(hour)
    elif minute < 10:
        spoken = f"{number_to_words(hour)} oh {number_to_words(minute)}"
    else:
        spoken = f"{number_to_words(hour)} {number_to_words(minute)}"
    if m.group(3):
        spoken += " a m" if m.group(3).strip()[0] in "aA" else " p m"
    return f" {spoken} "


def clock_times(text: str) -> str:
    return _CLOCK.sub(_clock_words, text)


# --------------------------------------------------------------------------- tokens

_TOKEN = re.compile(
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?|\.\d+)"
    r"|(?P<word>[^\W\d_]+(?:'[^\W\d_]+)*)"
    r"|(?P<space>[\s\u2063]+)"
    r"|(?P<sym>.)",
    re.S,
)
_ORDINAL_SUFFIX = {"st", "nd", "rd", "th"}
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
             "£": ("pound", "pounds", "penny", "pence")}
_SCALE_WORDS = {"thousand", "million", "billion", "trillion"}
# Only after a number, where the reading is unambiguous; singular, plural.
_UNITS = {
    "km": ("kilometer", "kilometers"), "m": ("meter", "meters"), "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"), "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"), "l": ("liter", "liters"), "L": ("liter", "liters"),
    "ml": ("milliliter", "milliliters"), "mL": ("milliliter", "milliliters"),
    "h": ("hour", "hours"), "hr": ("hour", "hours"), "hrs": ("hour", "hours"),
    "min": ("minute", "minutes"), "s": ("second", "seconds"), "sec": ("second", "seconds"),
    "mph": ("mile per hour", "miles per hour"), "kmh": ("kilometer per hour", "kilometers per hour"),
    "ft": ("foot", "feet"), "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"),
}
_SYMBOL_WORDS = {
    "+": " plus ", "×": " times ", "·": " times ", "⋅": " times ", "÷": " divided by ",
    "=": " equals ", "≠": " is not equal to ", "<": " is less than ", ">": " is greater than ",
    "≤": " is less than or equal to ", "≥": " is greater than or equal to ",
    "≈": " is approximately ", "±": " plus or minus ", "&": " and ", "@": " at ",
}
_KEEP = set(".,?!;:'\"")
_OPERAND_BEFORE_UNARY = set("(=+-*/×÷<>≤≥≠≈±,[{:^") | {"–", "—"}


# Words the LaTeX pass writes between operands: a "-" right after one of them is a sign.
_CONNECTIVES = {"of", "to", "is", "than", "by", "from", "as", "and", "or", "over", "times",
                "plus", "minus", "equals", "base", "sub", "choose", "approaches", "power"}


def _is_operand(tok: tuple[str, str] | None, math: bool) -> bool:
    if tok is None:
        return False
    kind, text = tok
    if kind == "num":
        return True
    if kind == "word":
        return (math and text not in _CONNECTIVES) or len(text) == 1
    return text in ")]"


def _verbalise(text: str, math: bool) -> str:
    toks = [(m.lastgroup or "sym", m.group()) for m in _TOKEN.finditer(text)]
    out: list[str] = []

    def neighbour(i: int, step: int) -> tuple[str, str] | None:
        j = i + step
        while 0 <= j < len(toks) and toks[j][0] == "space":
            j += step
        return toks[j] if 0 <= j < len(toks) else None

    def adjacent(i: int) -> tuple[str, str] | None:
        return toks[i] if 0 <= i < len(toks) else None

    i = 0
    while i < len(toks):
        kind, tok = toks[i]
        nxt, prev = adjacent(i + 1), neighbour(i, -1)
        if kind == "num":
            is_int = tok.replace(",", "").isdigit()
            after = adjacent(i + 2)
            if is_int and nxt and nxt[0] == "word" and nxt[1].lower() in _ORDINAL_SUFFIX:
                out.append(ordinal_to_words(int(tok.replace(",", ""))))
                i += 2
                continue
            if (is_int and nxt == ("sym", "/") and after and after[0] == "num"
                    and after[1].replace(",", "").isdigit()):
                out.append(fraction_to_words(int(tok.replace(",", "")), int(after[1].replace(",", ""))))
                i += 3
                continue
            out.append(f" {decimal_to_words(tok)} ")
            j = i + 1
            while j < len(toks) and toks[j][0] == "space":
                j += 1
            # Units only in prose: in maths "3 m" is three times m.
            if not math and j > i + 1 and j < len(toks) and toks[j][0] == "word" and toks[j][1] in _UNITS:
                singular, plural = _UNITS[toks[j][1]]
                out.append(" " + (singular if tok == "1" else plural))
                i = j + 1
                if (i + 1 < len(toks) and toks[i] == ("sym", "/") and toks[i + 1][0] == "word"
                        and toks[i + 1][1] in _UNITS):
                    out.append(" per " + _UNITS[toks[i + 1][1]][0])  # "5 m/s"
                    i += 2
                continue
            i += 1
            continue
        if kind == "word":
            if not math and tok in ("x", "X") and prev and prev[0] == "num" and (n2 := neighbour(i, 1)) \
                    and n2[0] == "num" and toks[i - 1][0] == "space":
                out.append(" times ")
            else:
                out.append(f" {tok} ")  # spaced: "5x" must not become "fivex"
            i += 1
            continue
        if kind == "space":
            out.append(", " if PAUSE in tok else " ")
            i += 1
            continue
        # symbols
        nxt_any = neighbour(i, 1)
        if tok in _CURRENCY and nxt and nxt[0] == "num":
            out.append(_money(tok, nxt[1], neighbour(i + 1, 1)))
            scale = neighbour(i + 1, 1)
            i += 2
            if scale and scale[0] == "word" and scale[1].lower() in _SCALE_WORDS:
                # "$5 million" -> "five million dollars": the unit goes after the scale word.
                j = i
                while toks[j][0] == "space":
                    j += 1
                i = j + 1
            continue
        if tok in "-–—":
            unary = (nxt is not None and (nxt[0] == "num" or (math and nxt[0] == "word") or nxt[1] == "(")
                     and (prev is None or (prev[0] == "sym" and prev[1] in _OPERAND_BEFORE_UNARY)
                          or (prev[0] == "word" and prev[1] in _CONNECTIVES)))
            if unary:
                out.append(" negative ")
            elif _is_operand(prev, math) and _is_operand(nxt_any, math) or (nxt_any and nxt_any[1] == "("):
                if tok != "-" and not math and prev and prev[0] == "num" and nxt_any and nxt_any[0] == "num":
                    out.append(" to ")  # "10–20" in prose is a range
                elif math or (prev and prev[0] == "num") or (nxt_any and nxt_any[0] == "num") \
                        or (_is_operand(prev, False) and _is_operand(nxt_any, False)):
                    out.append(" minus ")
                elif toks[i - 1][0] == "space" if i else False:
                    out.append(", ")  # a spaced dash between words is a pause
                else:
                    out.append(" ")  # a hyphen: "well-known" reads as two words
            elif tok != "-" or (i and toks[i - 1][0] == "space"):
                out.append(", ")
            else:
                out.append(" ")
            i += 1
            continue
        if tok == "*":
            out.append(" times " if (math or _is_operand(prev, math)) and _is_operand(nxt_any, math) else " ")
        elif tok == "/":
            if math or (_is_operand(prev, False) and _is_operand(nxt_any, False)):
                out.append(" over ")
            elif nxt_any and nxt_any[0] == "word" and nxt_any[1] in _UNITS:
                out.append(" per ")
            elif nxt_any and nxt_any[1] == "or":
                out.append(" ")  # "and/or"
            else:
                out.append(" or ")
        elif tok == "%":
            out.append(" percent ")
        elif tok == "°":
            unit = nxt if nxt and nxt[0] == "word" else None
            if unit and unit[1] in ("C", "F"):
                out.append(" degrees " + ("Celsius " if unit[1] == "C" else "Fahrenheit "))
                i += 2
                continue
            out.append(" degrees ")
        elif tok == "!" and math and _is_operand(prev, math):
            out.append(" factorial ")
        elif tok == ":" and math and prev and prev[0] == "num" and nxt_any and nxt_any[0] == "num":
            out.append(" to ")  # a ratio
        elif tok == "(" and math and prev and prev[0] == "word" and prev[1] in ("f", "g", "h") \
                and toks[i - 1] == prev:
            out.append(" of ")
        elif tok == "#" and nxt_any and nxt_any[0] == "num":
            out.append(" number ")
        elif tok == "~" and nxt_any and nxt_any[0] == "num":
            out.append(" about ")
        elif tok in _SYMBOL_WORDS:
            out.append(_SYMBOL_WORDS[tok])
        elif tok in _KEEP:
            out.append(tok)
        else:
            out.append(" ")  # brackets, stray LaTeX characters, emoji: silent
        i += 1
    return "".join(out)


def _money(symbol: str, amount: str, after: tuple[str, str] | None) -> str:
    one, many, sub_one, sub_many = _CURRENCY[symbol]
    value = amount.replace(",", "")
    if after and after[0] == "word" and after[1].lower() in _SCALE_WORDS:
        return f"{decimal_to_words(value)} {after[1].lower()} {many}"
    whole, _, cents = value.partition(".")
    if cents and len(cents) == 2:
        w, c = int(whole or "0"), int(cents)
        parts = []
        if w:
            parts.append(f"{number_to_words(w)} {one if w == 1 else many}")
        if c or not w:
            parts.append(f"{number_to_words(c)} {sub_one if c == 1 else sub_many}")
        return " and ".join(parts)
    if cents:
        return f"{decimal_to_words(value)} {many}"
    return f"{decimal_to_words(value)} {one if int(whole) == 1 else many}"


# --------------------------------------------------------------------------- public

def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([.,?!;:])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)  # ", ," from stacked pauses
    text = re.sub(r"([.?!])\s*,", r"\1", text)
    text = re.sub(r"^[\s,;:]+", "", text)
    text = re.sub(r"[\s,;:]+([.?!])", r"\1", text)
    return text.strip(" ,;:")


def speakable(text: str) -> str:
    """The words a TTS engine should say for `text` (see the module docstring for the rules)."""
    text = clock_times(_normalise_unicode(text))
    text = text.replace("\\$", "\x00")  # an escaped dollar is always currency, never math
    parts: list[str] = []
    for chunk, math in segments(text):
        chunk = chunk.replace("\x00", "$")
        rewritten = latex_to_words(absolute_values(chunk) if math else chunk, math)
        parts.append(_verbalise(rewritten, math))
    return _tidy(" ".join(parts) if len(parts) > 1 else "".join(parts))
