"""data_tools.text.speakable: numbers, operators, fractions, powers, LaTeX and symbols in words."""

from __future__ import annotations

import pytest

from data_tools.text.number_words import decimal_to_words, fraction_to_words, number_to_words, ordinal_to_words
from data_tools.text.speakable import speakable


@pytest.mark.parametrize(("n", "words"), [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (42, "forty two"),
    (100, "one hundred"), (105, "one hundred five"), (999, "nine hundred ninety nine"),
    (1000, "one thousand"), (1001, "one thousand one"), (12345, "twelve thousand three hundred forty five"),
    (1_000_000, "one million"), (2_000_500_003, "two billion five hundred thousand three"),
    (-8, "negative eight"),
    (10**15, "one zero zero zero zero zero zero zero zero zero zero zero zero zero zero zero"),
])
def test_number_to_words(n: int, words: str) -> None:
    assert number_to_words(n) == words


@pytest.mark.parametrize(("n", "words"), [
    (1, "first"), (2, "second"), (3, "third"), (4, "fourth"), (5, "fifth"), (8, "eighth"),
    (9, "ninth"), (12, "twelfth"), (20, "twentieth"), (21, "twenty first"), (100, "one hundredth"),
])
def test_ordinal_to_words(n: int, words: str) -> None:
    assert ordinal_to_words(n) == words


@pytest.mark.parametrize(("num", "den", "words"), [
    (1, 2, "one half"), (3, 2, "three halves"), (1, 4, "one quarter"), (3, 4, "three quarters"),
    (2, 3, "two thirds"), (5, 12, "five twelfths"), (1, 20, "one twentieth"),
    (7, 25, "seven over twenty five"), (3, 0, "three over zero"), (4, 1, "four over one"),
])
def test_fraction_to_words(num: int, den: int, words: str) -> None:
    assert fraction_to_words(num, den) == words


@pytest.mark.parametrize(("text", "words"), [
    ("3.14", "three point one four"), ("0.5", "zero point five"), (".5", "point five"),
    ("1,234.05", "one thousand two hundred thirty four point zero five"), ("007", "zero zero seven"),
])
def test_decimal_to_words(text: str, words: str) -> None:
    assert decimal_to_words(text) == words


@pytest.mark.parametrize(("text", "spoken"), [
    # numbers and arithmetic in prose
    ("What is 15 + 27?", "What is fifteen plus twenty seven?"),
    ("What is 3-4?", "What is three minus four?"),
    ("What is 10 - 3?", "What is ten minus three?"),
    ("What is 2+3*4?", "What is two plus three times four?"),
    ("What is 3 x 4?", "What is three times four?"),
    ("What is 12 ÷ 4?", "What is twelve divided by four?"),
    ("Is 5 ≥ 3?", "Is five is greater than or equal to three?"),
    ("-3 + -4 = -7", "negative three plus negative four equals negative seven"),
    ("There are 1,250 people.", "There are one thousand two hundred fifty people."),
    ("The 21st and 2nd place", "The twenty first and second place"),
    # fractions, percent, money, degrees, units
    ("Compute 1/2 + 3/4.", "Compute one half plus three quarters."),
    ("2½ cups", "two and one half cups"),
    ("A 25% discount", "A twenty five percent discount"),
    ("It costs $5.", "It costs five dollars."),
    ("It costs $1.", "It costs one dollar."),
    ("It costs $2.50.", "It costs two dollars and fifty cents."),
    ("It costs $0.75.", "It costs seventy five cents."),
    ("A $5 million prize", "A five million dollars prize"),
    ("Tickets are $5 and $10.", "Tickets are five dollars and ten dollars."),
    (r"It costs \$3.", "It costs three dollars."),
    ("It was 30°C.", "It was thirty degrees Celsius."),
    ("He ran 5 km in 20 min.", "He ran five kilometers in twenty minutes."),
    ("at 3 m/s", "at three meters per second"),
    ("1 kg of flour", "one kilogram of flour"),
    # prose punctuation keeps its meaning
    ("a well-known fact", "a well known fact"),
    ("I scored 95 - that's good.", "I scored ninety five, that's good."),
    ("Pages 10–20", "Pages ten to twenty"),
    ("cats and/or dogs", "cats and or dogs"),
    ("A. Paris. B. Rome.", "A. Paris. B. Rome."),
    # LaTeX
    ("Solve $x^2 - 5x + 6 = 0$.", "Solve x squared minus five x plus six equals zero."),
    (r"Find $\frac{1}{2} + \frac{x+1}{3}$.", "Find one half plus x plus one, all over three."),
    (r"$\dfrac{a}{b}$", "a over b"),
    (r"What is $\sqrt{16}$?", "What is the square root of sixteen?"),
    (r"$\sqrt[3]{27}$", "the cube root of twenty seven"),
    (r"$\sqrt[4]{x}$", "the fourth root of x"),
    (r"$\binom{5}{2}$", "five choose two"),
    (r"$\sum_{i=1}^{n} i$", "the sum from i equals one to n of i"),
    (r"$\log_2 8$", "log base two of eight"),
    (r"$\lim_{x \to 0} \frac{\sin x}{x}$", "the limit as x approaches zero, of sine x, all over x"),
    ("$(x+1)^2$", "x plus one, all squared"),
    ("$2^{n+1} - 1$", "two to the power of n plus one, minus one"),
    ("$10^6$", "ten to the power of six"),
    ("$x^{-1}$", "x to the power of negative one"),
    ("$y^3$", "y cubed"),
    ("$|x - 3| < 5$", "the absolute value of x minus three is less than five"),
    ("$a_1 + a_{n}$", "a sub one plus a sub n"),
    (r"$\text{area} = \pi r^2$", "area equals pi r squared"),
    (r"In triangle $ABC$, $\angle A = 60^\circ$.", "In triangle A B C, angle A equals sixty degrees."),
    ("Let $f(x) = 2x + 3$. Find $f(-1)$.", "Let f of x equals two x plus three. Find f of negative one."),
    (r"$x \le 3$ and $y \neq 2$", "x is less than or equal to three and y is not equal to two"),
    (r"$3 \times 4 \cdot 5$", "three times four times five"),
    (r"$\$5$", "five dollars"),
    ("$5!$", "five factorial"),
    ("The ratio $3:4$", "The ratio three to four"),
    (r"$$\int_0^1 x\,dx$$", "the integral from zero to one of x d x"),
    (r"\(3 \times 4\)", "three times four"),
    (r"\[x = \pm 2\]", "x equals plus or minus two"),
    (r"$\left(\frac{3}{4}\right)^2$", "three quarters, all squared"),
    # unicode
    ("x² + y³", "x squared plus y cubed"),
    ("π ≈ 3.14", "pi is approximately three point one four"),
    ("２３", "twenty three"),  # full-width digits
])
def test_speakable(text: str, spoken: str) -> None:
    assert speakable(text) == spoken


def test_speakable_leaves_no_symbols_behind() -> None:
    messy = r"Let $S=\{1,2,\ldots,10\}$ and $\mathbb{R}^2$; find $\overline{AB}$ [see Fig. 1] & #3 @ 5pm {x}"
    out = speakable(messy)
    assert not set(out) & set("\\{}[]$^_&#@|"), out
    assert "and so on" in out and "A B" in out and "number three" in out


def test_speakable_is_idempotent_on_plain_words() -> None:
    plain = "What is the capital of France? A. Paris. B. Rome."
    assert speakable(plain) == plain
    assert speakable(speakable("What is $3/4$ of 12?")) == speakable("What is $3/4$ of 12?")


def test_speakable_empty_and_symbol_only() -> None:
    assert speakable("") == ""
    assert speakable("   ") == ""
    assert speakable("$$ $$ {} []") == ""


@pytest.mark.parametrize("text, spoken", [
    ("The train leaves at 3:45.", "The train leaves at three forty five."),
    ("Meet at 10:05 pm.", "Meet at ten oh five p m."),
    ("Lunch is at 12:00.", "Lunch is at twelve o'clock."),
    ("It opens at 9:30 a.m. sharp.", "It opens at nine thirty a m sharp."),
    ("Mix them 3:4 by weight.", "Mix them three: four by weight."),  # a ratio, not a time
])
def test_clock_times_are_read_as_times(text: str, spoken: str) -> None:
    assert speakable(text) == spoken
