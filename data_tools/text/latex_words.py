"""LaTeX and inline maths as plain words, for speech (pure; used by data_tools.text.speakable).

`segments(text)` splits prose from maths ($...$, $$...$$, \\(...\\), \\[...\\]);
`latex_to_words(chunk, math)` rewrites \\frac, \\sqrt, \\binom, powers and subscripts,
\\text-like wrappers, Greek letters, relations, \\sum/\\int/\\lim limits, \\left/\\right and
spacing into words, leaving numbers and operator characters for the token pass:

    latex_to_words(r"\\frac{x+1}{3}", math=True)  -> " x+1\u2063 all over 3\u2063"

Inside maths, runs of 2 to 4 letters are spelled ("AB" -> "A B"): they are points or
products, never words.
"""

from __future__ import annotations

import re

from data_tools.text.number_words import ordinal_to_words

__all__ = ["PAUSE", "segments", "latex_to_words", "absolute_values"]

# --------------------------------------------------------------------------- math segments

# Pandoc's rule for inline $...$: the opening $ has a non-space right after it, the closing
# $ a non-space right before it and no digit right after it, so "$5 and $10" stays currency.
_MATH = re.compile(
    r"\$\$(?P<d>.+?)\$\$"
    r"|\\\[(?P<b>.+?)\\\]"
    r"|\\\((?P<p>.+?)\\\)"
    r"|(?<!\\)\$(?P<i>[^\s$](?:[^$]*?[^\s\\$])?)\$(?!\d)",
    re.S,
)


def segments(text: str) -> list[tuple[str, bool]]:
    """Split into (chunk, is_math) pieces."""
    out: list[tuple[str, bool]] = []
    pos = 0
    for m in _MATH.finditer(text):
        if m.start() > pos:
            out.append((text[pos:m.start()], False))
        body = next(g for g in m.groups() if g is not None)
        out.append((body, True))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], False))
    return out


# --------------------------------------------------------------------------- LaTeX

# A pause the LaTeX pass inserts for grouping ("x plus one, all squared"). It is not a
# comma yet, so the token pass still sees "-" after it as binary; it becomes ", " at the end.
PAUSE = "\u2063"

_GREEK = ("alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
          "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "pi", "rho", "sigma", "tau",
          "upsilon", "phi", "varphi", "chi", "psi", "omega")
_LATEX_WORDS = {
    **{g: g.replace("var", "") for g in _GREEK},
    **{g.capitalize(): g.replace("var", "") for g in _GREEK},
    "times": " times ", "cdot": " times ", "ast": " times ", "div": " divided by ",
    "pm": " plus or minus ", "mp": " minus or plus ",
    "le": " is less than or equal to ", "leq": " is less than or equal to ",
    "leqslant": " is less than or equal to ", "ge": " is greater than or equal to ",
    "geq": " is greater than or equal to ", "geqslant": " is greater than or equal to ",
    "ne": " is not equal to ", "neq": " is not equal to ", "approx": " is approximately ",
    "equiv": " is congruent to ", "cong": " is congruent to ", "sim": " is similar to ",
    "lt": " is less than ", "gt": " is greater than ",
    "to": " to ", "rightarrow": " to ", "implies": " implies ", "Rightarrow": " implies ",
    "iff": " if and only if ", "infty": " infinity ", "in": " in ", "notin": " not in ",
    "cup": " union ", "cap": " intersection ", "subset": " is a subset of ",
    "subseteq": " is a subset of ", "emptyset": " the empty set ", "varnothing": " the empty set ",
    "angle": " angle ", "triangle": " triangle ", "parallel": " is parallel to ",
    "perp": " is perpendicular to ", "circ": "°", "degree": "°", "prime": " prime ",
    "ldots": " and so on ", "cdots": " and so on ", "dots": " and so on ", "vdots": " ",
    "sin": " sine ", "cos": " cosine ", "tan": " tangent ", "cot": " cotangent ",
    "sec": " secant ", "csc": " cosecant ", "arcsin": " arc sine ", "arccos": " arc cosine ",
    "arctan": " arc tangent ", "log": " log ", "ln": " natural log ", "lg": " log ",
    "exp": " exp ", "max": " max ", "min": " min ", "gcd": " the greatest common divisor of ",
    "lcm": " the least common multiple of ", "mod": " mod ", "bmod": " mod ", "pmod": " mod ",
    "det": " the determinant of ", "lim": " the limit ", "sum": " the sum ", "prod": " the product ",
    "int": " the integral ", "oint": " the integral ", "partial": " partial ", "nabla": " del ",
    "forall": " for all ", "exists": " there exists ", "neg": " not ", "land": " and ",
    "lor": " or ", "cdotp": " times ", "quad": " ", "qquad": " ", "colon": ":",
    "lfloor": " the floor of ", "rfloor": " ", "lceil": " the ceiling of ", "rceil": " ",
    "langle": " ", "rangle": " ", "%": "%", "$": "$", "&": " and ", "#": "#", "_": " ",
    "{": " ", "}": " ", "|": " ", ",": " ", ";": " ", "!": "", ":": " ", " ": " ",
    "\\": ", ",
}
_DROP = {"left", "right", "big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr", "biggl",
         "biggr", "displaystyle", "textstyle", "scriptstyle", "limits", "nolimits", "middle",
         "noindent", "centering", "label", "tag", "nonumber", "notag"}
_WRAPPERS = {"text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf", "mathit",
             "mathsf", "mathtt", "mathbb", "mathcal", "mathfrak", "boldsymbol", "operatorname",
             "boxed", "mbox", "hbox", "emph", "underline", "overline", "widehat", "hat", "bar",
             "tilde", "widetilde", "dot", "ddot", "overrightarrow", "overleftrightarrow", "fbox"}
_TEXT_WRAPPERS = {"text", "textbf", "textit", "textrm", "textnormal", "mathrm", "operatorname",
                  "mbox", "hbox", "emph", "fbox"}
_FRACS = {"frac", "dfrac", "tfrac", "cfrac"}
_BINOMS = {"binom", "dbinom", "tbinom", "choose"}
_BIG_OPS = {"sum", "prod", "int", "oint", "lim"}
_ROOTS = {"2": "square", "3": "cube"}


def _read_braced(s: str, i: int) -> tuple[str, int]:
    """s[i] == "{": return (inside, index after the matching "}"); unbalanced runs to the end."""
    depth, j = 0, i
    while j < len(s):
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1:j], j + 1
        j += 1
    return s[i + 1:], len(s)


def _read_arg(s: str, i: int, script: bool = False) -> tuple[str, int]:
    """One LaTeX argument at s[i:]: a {group}, a \\command, or one character.

    For ^ and _ outside braces, a whole (signed) number counts as one argument, because
    plain-text maths writes "2^10" and "x^-1" for two to the ten and x to the minus one.
    """
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return "", i
    if s[i] == "{":
        return _read_braced(s, i)
    if s[i] == "\\":
        m = re.match(r"\\([A-Za-z]+|.)", s[i:])
        assert m is not None
        return m.group(), i + m.end()
    if script:
        m = re.match(r"-?\d+(?:\.\d+)?", s[i:])
        if m:
            return m.group(), i + m.end()
    return s[i], i + 1


def _is_simple(x: str) -> bool:
    return re.fullmatch(r"\s*(-?[\w.]+|\\[A-Za-z]+)\s*", x) is not None


def _power(base_char: str, exp: str, math: bool) -> str:
    """The words for ^exp; `exp` is still LaTeX."""
    e = exp.strip()
    if e in ("\\circ", "°", "\\degree"):
        return "°"
    if e in ("\\prime", "'", "\\prime\\prime"):
        return " prime" if e != "\\prime\\prime" else " double prime"
    grouped = base_char == ")"
    lead = f"{PAUSE} all" if grouped else ""
    if e == "2":
        return f"{lead} squared "
    if e == "3":
        return f"{lead} cubed "
    words = latex_to_words(e, math)
    # A compound exponent gets a pause after it, so "2^{n+1} - 1" does not run together.
    tail = " " if _is_simple(e) else PAUSE
    return f"{lead} to the power of {words}{tail}"


# Function names written without a backslash in maths; other letter runs are products
# ("xy") or points ("AB") and are spelled out letter by letter.
_BARE_FUNCTIONS = {"sin": "sine", "cos": "cosine", "tan": "tangent", "log": "log", "ln": "natural log",
                   "exp": "exp", "max": "max", "min": "min", "gcd": "gcd", "lcm": "lcm", "mod": "mod",
                   "lim": "limit", "det": "det"}


def latex_to_words(s: str, math: bool = False) -> str:
    """Rewrite LaTeX commands, ^ and _ in `s` into plain words and symbols (recursive).

    With `math`, runs of 2 to 4 plain letters are spelled ("AB" -> "A B"), since inside a
    formula they are points or products, never words; \\text{...} keeps its words.
    """
    out: list[str] = []
    i = 0
    last_cmd = ""
    while i < len(s):
        c = s[i]
        if c == "\\":
            m = re.match(r"\\([A-Za-z]+)\*?|\\(.)", s[i:], re.S)
            assert m is not None
            name = m.group(1) or m.group(2)
            i += m.end()
            if name in ("begin", "end"):
                _, i = _read_arg(s, i)  # environment name: aligned, cases, ...
                out.append(" ")
            elif name in _FRACS:
                num, i = _read_arg(s, i)
                den, i = _read_arg(s, i)
                if re.fullmatch(r"\s*\d+\s*", num) and re.fullmatch(r"\s*\d+\s*", den):
                    out.append(f" {num.strip()}/{den.strip()} ")  # the token pass names it
                elif _is_simple(num) and _is_simple(den):
                    out.append(f" {latex_to_words(num, math)} over {latex_to_words(den, math)} ")
                else:
                    out.append(f" {latex_to_words(num, math)}{PAUSE} all over {latex_to_words(den, math)}{PAUSE}")
            elif name in _BINOMS and name != "choose":
                n, i = _read_arg(s, i)
                k, i = _read_arg(s, i)
                out.append(f" {latex_to_words(n, math)} choose {latex_to_words(k, math)} ")
            elif name == "sqrt":
                degree = ""
                if i < len(s) and s[i] == "[":
                    j = s.find("]", i)
                    j = len(s) if j < 0 else j
                    degree, i = s[i + 1:j].strip(), j + 1
                arg, i = _read_arg(s, i)
                if degree and degree not in _ROOTS:
                    root = (ordinal_to_words(int(degree)) if degree.isdigit() else f"{latex_to_words(degree)}th")
                else:
                    root = _ROOTS.get(degree or "2")
                out.append(f" the {root} root of {latex_to_words(arg, math)}{' ' if _is_simple(arg) else PAUSE}")
            elif name == "vec":
                arg, i = _read_arg(s, i)
                out.append(f" vector {latex_to_words(arg, math)} ")
            elif name in _WRAPPERS:
                arg, i = _read_arg(s, i)
                # \overline{AB} is the segment AB and is spelled; \text{apples} is a word.
                spell = math and name not in _TEXT_WRAPPERS
                inner = latex_to_words(arg, spell)
                out.append(inner if name.startswith("text") else f" {inner} ")
            elif name in _DROP:
                pass
            elif name in _LATEX_WORDS:
                out.append(_LATEX_WORDS[name])
            else:
                out.append(f" {name} ")  # an unknown command: its name is the best guess
            last_cmd = name
            continue
        if c in "^_":
            arg, i = _read_arg(s, i + 1, script=True)
            prev = "".join(out).rstrip()[-1:] if out else ""
            if c == "^":
                if last_cmd in _BIG_OPS:
                    out.append(f" to {latex_to_words(arg, math)} of ")
                else:
                    out.append(_power(prev, arg, math))
            elif last_cmd in ("log", "lg"):
                out.append(f" base {latex_to_words(arg, math)} of ")
            elif last_cmd == "lim":
                out.append(f" as {latex_to_words(arg, math).replace(' to ', ' approaches ')}{PAUSE} of ")
            elif last_cmd in _BIG_OPS:
                out.append(f" from {latex_to_words(arg, math)} ")
            else:
                out.append(f" sub {latex_to_words(arg, math)} ")
            if last_cmd not in _BIG_OPS:
                last_cmd = ""
            continue
        if math and c.isascii() and c.isalpha():
            m = re.match(r"[A-Za-z]+", s[i:])
            assert m is not None
            run = m.group()
            i += len(run)
            if run in _BARE_FUNCTIONS:
                out.append(f" {_BARE_FUNCTIONS[run]} ")
                last_cmd = run
            elif 2 <= len(run) <= 4:
                out.append(" " + " ".join(run) + " ")
                last_cmd = ""
            else:
                out.append(run)
                last_cmd = ""
            continue
        if c in "{}":
            out.append(" ")
        elif c == "&":
            out.append(" ")  # alignment in align/cases environments
        else:
            out.append(c)
            if not c.isspace():
                last_cmd = ""
        i += 1
    return "".join(out)


def absolute_values(s: str) -> str:
    # Through \text so that the math pass does not spell "of" as "o f".
    return re.sub(r"\|([^|]+)\|", lambda m: r"\text{ the absolute value of }" + m.group(1) + " ", s)
