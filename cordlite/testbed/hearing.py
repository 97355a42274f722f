"""The hearing probe: how many of a spoken question's numbers a transcriber heard.

    heard_numbers(" Mia has seven shells. She finds 5 more.", (7, 5))   # True
    heard_numbers(" Me as a seven shells. She finds five more. She gives free to Omar.", (7, 5, 3))
    # -> False: "three" was heard as "free"

A question's numbers are those written in it, in order (`written_numbers`; "He doubles them"
names no number, though its operand is 2). A transcript hears them when each appears, in order,
as digits or as words; everything else (names, filler words, punctuation) may differ. The numbers
are what the answer's arithmetic needs: hearing them is what "the audio view hears the
question" means for the testbed.
"""

from __future__ import annotations

import re

from data_tools.text.number_words import number_to_words

_TOKEN = re.compile(r"[a-z]+|\d[\d,]*")


def written_numbers(question: str) -> tuple[int, ...]:
    """The numbers a question says, in order: "Mia has 7 shells. She doubles them." -> (7,)."""
    return tuple(int(m.replace(",", "")) for m in re.findall(r"\d[\d,]*", question))


def spoken_tokens(text: str) -> list[str]:
    """Lower-case words with every number written as words ("12," -> "twelve"; "twenty-one" -> two words)."""
    out: list[str] = []
    for tok in _TOKEN.findall(text.lower().replace("-", " ")):
        out += number_to_words(int(tok.replace(",", ""))).split() if tok[0].isdigit() else [tok]
    # "a hundred and five" is "one hundred five": the article and the "and" are not part of the number
    for i, tok in enumerate(out):
        if tok == "a" and i + 1 < len(out) and out[i + 1] in ("hundred", "thousand"):
            out[i] = "one"
    return [t for i, t in enumerate(out) if not (t == "and" and 0 < i < len(out) - 1
                                                 and out[i - 1] in ("hundred", "thousand") and out[i + 1] in _UNITS)]


def heard_numbers(transcript: str, numbers: tuple[int, ...]) -> bool:
    """Every number of `numbers` found in `transcript`, in order, each as its own run of words."""
    words, pos = spoken_tokens(transcript), 0
    for n in numbers:
        target = number_to_words(n).split()
        while pos + len(target) <= len(words):
            window = words[pos:pos + len(target)]
            # a whole number: not the head of a longer one ("seven" inside "seventy" is another word anyway;
            # "twenty" must not match the start of "twenty one")
            longer = pos + len(target) < len(words) and target[-1] in _TENS and words[pos + len(target)] in _UNITS
            if window == target and not longer:
                pos += len(target)
                break
            pos += 1
        else:
            return False
    return True


_TENS = {"twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred"}
_UNITS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty", "thirty",
          "forty", "fifty", "sixty", "seventy", "eighty", "ninety"}
