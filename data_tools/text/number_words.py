"""Numbers as English words, for speech: cardinals, ordinals, decimals and fractions (pure).

    number_to_words(1234)      -> "one thousand two hundred thirty four"
    ordinal_to_words(22)       -> "twenty second"
    decimal_to_words("0.05")   -> "zero point zero five"
    fraction_to_words(3, 4)    -> "three quarters"

Used by data_tools.text.speakable; American style without "and", words joined by spaces.
"""

from __future__ import annotations

__all__ = ["number_to_words", "ordinal_to_words", "decimal_to_words", "fraction_to_words", "ONES"]


ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                  "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}
_DIGIT_LIMIT = 10**15  # beyond this, digits are read one by one (IDs, long constants)


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
        if n:
            words.append(ONES[n])
    elif n or not words:
        words.append(ONES[n])
    return words


def number_to_words(n: int) -> str:
    """Cardinal words, American style without "and": 123 -> "one hundred twenty three".

    Words are joined by spaces, not hyphens, because some TTS vocabularies drop "-".
    """
    if n < 0:
        return "negative " + number_to_words(-n)
    if n >= _DIGIT_LIMIT:
        return " ".join(ONES[int(d)] for d in str(n))
    if n == 0:
        return "zero"
    words: list[str] = []
    for scale, name in _SCALES:
        if n >= scale:
            words += _below_thousand(n // scale) + [name]
            n %= scale
    if n:
        words += _below_thousand(n)
    return " ".join(words)


def ordinal_to_words(n: int) -> str:
    """1 -> "first", 22 -> "twenty second", 100 -> "one hundredth"."""
    words = number_to_words(n).split(" ")
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def decimal_to_words(text: str) -> str:
    """A digit string, possibly with thousands commas and a decimal point, as words.

    "1,234.05" -> "one thousand two hundred thirty four point zero five"; leading zeros
    ("007") are read digit by digit, as people read codes.
    """
    text = text.replace(",", "")
    whole, _, frac = text.partition(".")
    if len(whole) > 1 and whole.startswith("0"):
        head = " ".join(ONES[int(d)] for d in whole)
    elif whole:
        head = number_to_words(int(whole))
    else:
        head = ""
    if not frac:
        return head
    tail = " ".join(ONES[int(d)] for d in frac)
    return f"{head} point {tail}".strip()


def fraction_to_words(num: int, den: int) -> str:
    """1/2 -> "one half", 3/4 -> "three quarters", 5/12 -> "five twelfths", 7/25 -> "seven over twenty five".

    Denominators up to 20 get their ordinal name; larger ones (or 0) are read "over".
    """
    if den in (0, 1) or den > 20 or num < 0:
        return f"{number_to_words(num)} over {number_to_words(den)}"
    if den == 2:
        name = "half" if num == 1 else "halves"
    elif den == 4:
        name = "quarter" if num == 1 else "quarters"
    else:
        name = ordinal_to_words(den) + ("" if num == 1 else "s")
    return f"{number_to_words(num)} {name}"
