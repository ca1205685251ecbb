"""normalize_answer: what is removed or rewritten around a final answer before it is parsed."""

import pytest

from grpo_lightning.rewards._normalize import MAX_ANSWER_CHARS, normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Digit groups (a plain space too: the text is one answer).
        ("10,\\!000", "10000"),
        ("1{,}234", "1234"),
        ("1\\,000", "1000"),
        ("1 000", "1000"),
        ("\\frac{12}{5,\\!525}", "\\frac{12}{5525}"),
        ("3, 5", "3, 5"),  # a list stays a list
        ("1,000", "1,000"),  # plain commas are math-verify's to read
        # Trailing punctuation and LaTeX spaces.
        ("104.", "104"),
        ("5,", "5"),
        ("x;", "x"),
        ("7\\,", "7"),
        ("7\\ ", "7"),
        ("7\\!", "7"),
        ("3\\quad", "3"),
        ("3\\qquad", "3"),
        ("x\\\\", "x"),
        ("3.5", "3.5"),
        # Money and math delimiters.
        ("\\$5", "5"),
        ("$\\frac{1}{2}$", "\\frac{1}{2}"),
        ("\\(3\\)", "3"),
        ("\\[x^2\\]", "x^2"),
        # Units after a value.
        ("7\\text{ hours}", "7"),
        ("7\\text{ hours}.", "7"),
        ("12\\mbox{ apples}", "12"),
        ("5\\,\\mathrm{cm}^2", "5"),
        ("\\frac{1}{2}\\text{ cup}", "\\frac{1}{2}"),
        ("\\text{Evelyn}", "\\text{Evelyn}"),  # a text answer is not a unit
        ("2\\mathrm{e}", "2\\mathrm{e}"),  # one roman letter is a constant, not a unit
        # Degrees.
        ("30^\\circ", "30"),
        ("30^{\\circ}.", "30"),
        ("90°", "90"),
        ("45\\degree", "45"),
        # A bare letter after a number is a variable; unit abbreviations stay for math-verify.
        ("2c", "2{c}"),
        ("2ab", "2{ab}"),
        ("x + c", "x + {c}"),
        ("\\frac{a}{2}c", "\\frac{a}{2}{c}"),
        ("5 cm", "5 cm"),
        ("3 kms", "3 kms"),  # a plural unit
        ("28 pct", "28\\%"),  # a percent word is a percent sign, not the variables p, c, t
        ("28pct", "28\\%"),
        ("28 Percent", "28\\%"),
        ("x pct", "x {pct}"),  # after a letter it is no percentage
        ("3 hrs", "3 hrs"),
        ("2\\pi", "2\\pi"),
        ("\\infty", "\\infty"),
        # Nothing left.
        ("", None),
        (" . ", None),
        (None, None),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_an_overlong_answer_is_no_answer():
    assert normalize_answer("1" * MAX_ANSWER_CHARS) == "1" * MAX_ANSWER_CHARS
    assert normalize_answer("1" * (MAX_ANSWER_CHARS + 1)) is None
