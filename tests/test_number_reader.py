"""The number reader: signs and groups where they stand (``-(1/3)``, ``\\frac{-1}{3}``, ``(-1)/3``), checked
against hand-computed values and against a reference evaluation of generated expressions."""

from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_lightning.rewards.answers import last_number, parse_number
from grpo_lightning.rewards.number_reader import MAX_DEPTH, iter_numbers

THIRD = Fraction(1, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-(1/3)", -THIRD),  # was read as +1/3
        ("−(1/3)", -THIRD),  # U+2212
        ("-\\left(\\frac{1}{3}\\right)", -THIRD),
        ("-\\(1/3\\)", -THIRD),
        ("-{1/3}", -THIRD),
        ("-[3]", Fraction(-3)),
        ("- (5)", Fraction(-5)),
        ("\\frac{-1}{3}", -THIRD),  # was -1
        ("\\frac{1}{-3}", -THIRD),  # was 1
        ("\\dfrac{-2}{-6}", THIRD),
        ("(-1)/3", -THIRD),  # was -1
        ("1/(-3)", -THIRD),  # was 1
        ("(1)/(3)", THIRD),  # was 1
        ("-(-3)", Fraction(3)),  # was -3
        ("-\\left(-\\frac{1}{3}\\right)", THIRD),
        ("-(1,000)", Fraction(-1000)),
        ("$-5", Fraction(-5)),
        ("-\\$5", Fraction(-5)),
        ("\\(-\\frac{1}{3}\\)", -THIRD),
        ("x = -(0.5)", Fraction(-1, 2)),
        # A group counts only when it closes right after its number.
        ("-(2+3)", Fraction(2)),
        ("(1, 3]", Fraction(1)),
        # A binary minus is not a sign, with or without a group after it.
        ("19-(3)", Fraction(19)),
        ("2(3)", Fraction(2)),  # juxtaposition: two numbers
    ],
)
def test_signs_and_groups_where_they_stand(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("19-(3)", Fraction(3)),  # binary minus: the last number is 3, not -3
        ("x-(3)", Fraction(3)),
        ("so the answer is -(1/3)", -THIRD),
        ("(a)-2", Fraction(2)),
        ("2(3)", Fraction(3)),
    ],
)
def test_last_number_with_groups(text, expected):
    assert last_number(text) == expected


def test_readings_do_not_overlap_and_are_in_order():
    text = "a -(1/3) b \\frac{-1}{3} c (2)/(4) d 19-3"
    readings = list(iter_numbers(text))
    assert [v for _, _, v in readings] == [-THIRD, -THIRD, Fraction(1, 2), Fraction(19), Fraction(3)]
    assert all(end <= start for (_, end, _), (start, _, _) in pairwise(readings))
    assert text[readings[0][0] : readings[0][1]] == "-(1/3)"


# --- Generated expressions against a reference evaluation --------------------------------------

GROUPS = [("(", ")"), ("[", "]"), ("{", "}"), ("\\left(", "\\right)"), ("\\(", "\\)")]
SPACES = st.sampled_from(["", " ", "  "])


@st.composite
def expressions(draw, depth=0):
    """(text, value) of a number as answers write it: signs, groups, fractions and ratios nested up to
    MAX_DEPTH. The value is computed from the structure, not by reading the text."""
    kind = draw(st.sampled_from(["int", "dec"] if depth >= MAX_DEPTH else ["int", "dec", "group", "frac"]))
    if kind == "int":
        n = draw(st.integers(0, 10_000))
        text, value = (f"{n:,}" if n >= 1000 and draw(st.booleans()) else str(n)), Fraction(n)
    elif kind == "dec":
        a, b = draw(st.integers(0, 99)), draw(st.integers(0, 99))
        text, value = f"{a}.{b:02d}", Fraction(f"{a}.{b:02d}")
    elif kind == "group":
        opening, closing = draw(st.sampled_from(GROUPS))
        inner, value = draw(expressions(depth + 1))
        text = opening + draw(SPACES) + inner + draw(SPACES) + closing
    else:
        (num, n), (den, d) = draw(expressions(depth + 1)), draw(expressions(depth + 1))
        if d == 0:
            den, d = "7", Fraction(7)
        command = draw(st.sampled_from(["\\frac", "\\dfrac", "\\tfrac"]))
        text, value = f"{command}{{{num}}}{{{den}}}", n / d
    if draw(st.booleans()):  # a sign in front
        sign = draw(st.sampled_from(["-", "−", "+"]))
        text, value = sign + draw(SPACES) + text, (-value if sign != "+" else value)
    return text, value


@st.composite
def ratios(draw):
    """An expression, or ``a/b`` of two (the denominator a signed atom, as the grammar has it)."""
    text, value = draw(expressions())
    den_text, den = draw(expressions(depth=1))
    if den == 0 or draw(st.booleans()):
        return text, value
    return f"{text}{draw(SPACES)}/{draw(SPACES)}{den_text}", value / den


@settings(max_examples=400, deadline=None)
@given(
    ratios(),
    st.sampled_from(["", "The answer is ", "x = ", "so $"]),
    st.sampled_from(["", ".", " apples", "$"]),
)
def test_generated_numbers_read_to_their_values(expression, before, after):
    text, value = expression
    assert parse_number(before + text + after) == value
    assert last_number(before + text + after) == value
