"""VoiceBench's multiple-choice answer extraction, restated as data (used by cordlite.judge.verify).

VoiceBench (Chen et al. 2024, arXiv:2410.17196; github.com/MatthewCYM/VoiceBench, Apache-2.0)
scores its multiple-choice subsets (mmsu, openbookqa) with `MCQEvaluator.extract_answer` in
src/evaluator/mcq.py. cordlite follows the same rules so that its MMSU / OpenBookQA accuracies
compare with VoiceBench's leaderboard and with the CORD paper's Table 1:

1. lower-case the response; drop a leading "<1>", "<2>" or "<3>";
2. the first PHRASE below (in this order) that occurs, with the letter a, b, c or d (tried in
   that order) in place of "@", names the answer;
3. else a response that is exactly one letter, or starts with a letter followed by . , : or );
4. else three literal fallbacks ("would be a." and friends all mean A);
5. else nothing: VoiceBench then guesses a letter at random (cordlite seeds that guess, see
   `cordlite.judge.conventions.convention_score`).

The phrases are plain substrings, not words, and only a-d are tried. So "the answer is a" also
matches "the answer is about ...", and "would be a" matches "would be a good choice": that is
VoiceBench's behaviour and it is kept on purpose, since the published numbers include it.

    from cordlite.judge.voicebench import voicebench_letter
    voicebench_letter("The correct answer is (C) Paris.")   # -> "C"
"""

from __future__ import annotations

CHOICES = "abcd"

# Phrase "@" = the option letter. Order matters: the first phrase that matches wins.
PHRASES: tuple[str, ...] = (
    # Chinese phrasings (Qwen-family models sometimes answer in Chinese)
    "答案是@", "答案是 @", "答案是选项@", "答案应该是@", "答案应该是 @", "答案就是选项@", "答案是‘@",
    "是@：", "答案选@", "@是正确", "选项@是最合适的",
    # explicit answer statements
    "final answer: @", "answer is: **@", "answer is **@", "the answer to the question is: **@",
    "the answer to the multiple-choice question is **@", "the answer is '@'", "@ is the best answer",
    "the answer is @", "the correct answer is @", "would select @", "would choose @",
    "would select option @", "would choose option @", 'is "@"', 'is "@.',
    # markdown-bold letters after "is" / "be"
    "is: **@)", "is **@,", "is **@:", "is **@)", "is: **@.", "is: **@:", "is **@.", "be **@,",
    "is: **@**", "is therefore option **@:", "is: \n\n**@)", "as **@:", "be **@)", "be **@:",
    "is: \n\n**@**", "suggests **@)", "be option **@:", "with **@)", 'is typically "@)', "be to **@)",
    "is: \n\n@)", "is likely to be: **@.", "is **@ (", "is option **@**", "is likely **@**",
    "is:\n**@.", "is:\n\n**@.",
    # "would be", "is", "option" with punctuation
    "would be @", "would be option @", "would be (@)", "would be option (@)", "is @,",
    "is typically @,", "is typically @.", "i'd say @.", "option @.", "option @:", "option @,",
    "the answer is:\n**@", "is @:", "is @.", "is @,", "is: @.", "is (@)", "is:\n**@)",
    "is likely **@:", "is the **@)",
    # a letter on the line after a colon
    ":\n@.", ":\n@)", ":\n@,", ": \n@.", ":  \n@.", ":\n\n@.", ":\n\n@)", "is most likely **@:",
    ":\n\n@,", ": \n\n@.",
    "is option @,", "(@) would be", "is (@).", "is @)", "is: @)", "is:\n\n@:", "is: **@,",
    "(option @)", "answer is (@)", "answer: @", "answer is:\n\n@", "answer is:\n@",
    'select option "@"', "is: @", "is typically **@,", "is **@**", "is likely '@'",
    "is option '@'", "is:\n**@:",
    # LaTeX-wrapped letters
    "is \\( \\boxed{@ ", "would be '@'", "is the **@** ", "question is @ (", "is:\n\n**@)",
    "closest to option **@**", "is most likely **@)", "the answer to the question is '@'",
    "question is **@**", "known as '@'", "is '@)", "is typically **@:",
    "is \\( \\boxed{\\text{@}} \\)", "is \\( \\text{@) }", "is \\( \\text{@} \\)", "is \\( \\text{@:",
    "is \\( \\text{@)", "is \\(\\text{@.", "is:\n\n**@", "is \\( \\text{@.}", "is \\( \\text{@.",
    "is \\( \\boxed{@}", "is:\n\\[ \\boxed{\\text{@}}", "is:\n\\[ \\text{@)", "is:\n\n\\[ \\text{@)",
    "is \\( \\textbf{@)", "is \\( \\text{@}", "is: \\( \\text{@.", "corresponds to:\n- **@:",
    "would be: **@**.", "is \\( @ \\)", "is:\n**@ ", "corresponds to option **@**", "be **@**",
    "be: \n\n@)", "is:\n\\[ \\boxed{@}", "is:  \n**@:", "is: \\( \\text{@)", "is likely: **@,",
    "is } \\mathbf{@.", "is \\( \\boxed{@)", "is \\( \\textbf{@}", "is \\(@\\)", "is:\n  \n**@:",
    "is option **@ ", "is:\n\\( \\textbf{@.", "is \\( \\mathbf{@}", "was option **@**",
    'is likely "@)', "option **@:", 'is "@)', "is most likely **@,", "is often **@:", "is:  \n@)",
    "is:\n@", "is:\n**@",
    # last resort: a letter with punctuation anywhere
    " @.", " @,", " @:", " @)", "**@.", "**@)", "**@:", '"@.', '"@,', '"@:', "(@)", '"@"', "{@}",
    "\n\n**@", "would be:\n\n@",
)

# Literal fallbacks after the single-letter checks; each means option A.
FALLBACKS_A: tuple[str, ...] = (
    "would be a.", 'would be "a.', "the best option from the given choices would be a scorpion (a)",
)


def voicebench_letter(response: str) -> str | None:
    """The option letter (A-D) VoiceBench's extractor reads from `response`, or None."""
    text = response.lower()
    if text.startswith(("<1>", "<2>", "<3>")):
        text = text[3:].strip()
    for phrase in PHRASES:
        for c in CHOICES:
            if phrase.replace("@", c) in text:
                return c.upper()
    for c in CHOICES:
        if text == c or text.startswith(tuple(c + p for p in ".,:)")):
            return c.upper()
    if any(f in text for f in FALLBACKS_A):
        return "A"
    return None
