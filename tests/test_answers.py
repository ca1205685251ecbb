"""Final-answer extraction: markers, boxes with nested braces, and exact number parsing."""

from fractions import Fraction

import pytest

from grpo_lightning.answers import (
    extract_gold_answer,
    extract_hash_answer,
    extract_last_boxed,
    last_number,
    parse_number,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("#### 1,234  ", "1,234"),
        ("first #### 3\nthen #### 4", "4"),  # the last marker wins
        ("####", None),  # a marker with nothing after it
        ("no marker here", None),
    ],
)
def test_extract_hash_answer(text, expected):
    assert extract_hash_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{5}$.", "5"),
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),  # nested braces
        (r"\boxed{1} and later \boxed{2}", "2"),  # the last box wins
        (r"\fbox{3} then \boxed{4}", "4"),
        (r"\boxed{4} then \fbox{3}", "3"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not count
        (r"\boxed 7.", "7"),  # the brace-less form takes the next token
        (r"\boxed{1} then an unclosed \boxed{2", "1"),  # an unclosed box is skipped
        (r"\boxed{\frac{1}{2}", None),  # never closed and nothing earlier
        ("no box", None),
    ],
)
def test_extract_last_boxed(text, expected):
    assert extract_last_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Janet has 3 + 4 = 7 eggs.\n#### 7", "7"),  # GSM8K answer text
        (r"Hence the answer is $\boxed{\frac{14}{3}}$.", r"\frac{14}{3}"),  # MATH solution
        (r"  \frac{14}{3} ", r"\frac{14}{3}"),  # bare answer (MATH-500's answer column)
        ("16", "16"),
        ("", None),
        (None, None),
        (r"a box that never closes \boxed{3", None),
    ],
)
def test_extract_gold_answer(text, expected):
    assert extract_gold_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18", Fraction(18)),
        ("18.0", Fraction(18)),
        ("-7 apples", Fraction(-7)),
        ("−7", Fraction(-7)),  # U+2212 minus sign
        ("$1,234.50 dollars.", Fraction(2469, 2)),
        (r"\$5", Fraction(5)),
        ("-$5", Fraction(-5)),
        ("1,000,000", Fraction(1_000_000)),
        ("3/4", Fraction(3, 4)),
        ("-3/4.", Fraction(-3, 4)),
        (r"\frac{3}{4}", Fraction(3, 4)),
        (r"\dfrac{3}{4}", Fraction(3, 4)),
        (r"-\tfrac{1}{2}", Fraction(-1, 2)),
        (".5", Fraction(1, 2)),
        (r"90^\circ", Fraction(90)),
        ("25%", Fraction(25)),
        ("1,2345", Fraction(1)),  # not a thousands grouping: two numbers, 1 and 2345
        ("3/0", None),  # no value, and nothing else to read
        ("no digits", None),
        ("", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12+7=19, 19-3=16", Fraction(16)),
        ("19-3", Fraction(3)),  # a binary minus is not a sign
        ("x = -3", Fraction(-3)),
        ("1, 2, 3", Fraction(3)),
        ("It costs $1,200 in total.", Fraction(1200)),
        ("nothing", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected
