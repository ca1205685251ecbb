"""Exact values of numbers written the way math answers write them, read by a small recursive parser.

A number is ``[sign] [$] body [/ [sign] atom]`` where the body is a decimal (``1,234.5``, ``.5``),
``\\frac{value}{value}`` (``\\dfrac``, ``\\tfrac``, ``\\cfrac``) or a group around a value: ``(...)``,
``[...]``, ``{...}``, ``\\left(...\\right)``, ``\\(...\\)``. So signs and grouping are read where they
stand: ``-(1/3)``, ``-\\left(\\frac{1}{3}\\right)``, ``\\frac{-1}{3}``, ``(-1)/3``, ``1/(-3)``, ``-(-3)``
and ``$-5`` all have their true sign, and a group counts only when it closes right after its value
(``-(2+3)`` is not ``-2``).

A minus sign at the start of a number counts only where it cannot be a binary minus: ``19-3`` holds 19
and 3, not -3. Anything after a number (units, ``%``, ``^\\circ``, a full stop) is not read.

Linear time on any input: whitespace between the parts is at most ``MAX_SPACES`` characters, groups
nest at most ``MAX_DEPTH`` deep, so a number's first digit lies at most ``MAX_PREFIX`` characters
after its start; start positions farther than that from the next digit are skipped without a try.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import Final

#: Numbers with more digits than this are not answers (and ``int()`` refuses beyond 4300 digits).
MAX_NUMBER_DIGITS = 100
#: Groups and fractions nest at most this deep inside a number (``-(\\frac{-1}{(3)})`` is 3 deep).
MAX_DEPTH = 3
#: Whitespace characters allowed between two parts of a number.
MAX_SPACES = 3


class _TooLongType:
    """The value of a number with more than ``MAX_NUMBER_DIGITS`` digits: unreadable."""

    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG: Final = _TooLongType()
#: A number's value: exact, None (no value: a zero denominator) or ``TOO_LONG``.
Value = Fraction | None | _TooLongType
#: A number as read, before it is evaluated (most numbers of a text are never needed): a decimal's
#: text, ``("-", node)`` or ``("/", numerator, denominator)``.
Node = str | tuple

# Thousands separators must group by three ("1,234,567"), so a list "1, 2, 3" stays three numbers.
_DECIMAL_RE = re.compile(r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+")
_SPACES = rf"\s{{0,{MAX_SPACES}}}"
_SPACES_RE = re.compile(_SPACES)
_MONEY_RE = re.compile(r"\\\$|\$")
_FRAC_RE = re.compile(r"\\[dtc]?frac" + _SPACES + r"\{")
_FRAC_MIDDLE_RE = re.compile(_SPACES + r"\}" + _SPACES + r"\{")
_FRAC_END_RE = re.compile(_SPACES + r"\}")
_SIGNS = {"-": -1, "−": -1, "+": 1}
# (opening, closing) delimiters of a group, longest openings first.
_GROUPS = (
    ("\\left\\{", "\\right\\}"),
    ("\\left(", "\\right)"),
    ("\\left[", "\\right]"),
    ("\\(", "\\)"),
    ("\\[", "\\]"),
    ("\\{", "\\}"),
    ("(", ")"),
    ("[", "]"),
    ("{", "}"),
)
# Where a number can start, and what before a sign makes it a binary operator ("19-3", "x+1", "(a)-2").
_START_RE = re.compile(r"[-−+$(\[{.\d]|\\(?:left|[dtc]?frac|[$(\[{])")
_OPERAND_END_RE = re.compile(r"[\w)\]}]")
_DIGIT_RE = re.compile(r"\d")
# The longest stretch before a number's first digit: per nesting level, spaces, a sign, spaces, a
# dollar sign, spaces and the longest opening (``\left\{``; ``\dfrac{`` with its spaces is as long).
MAX_PREFIX = (MAX_DEPTH + 1) * (3 * MAX_SPACES + 1 + 2 + max(len(o) for o, _ in _GROUPS) + MAX_SPACES)


def evaluate(node: Node) -> Value:
    """The value of a number as read."""
    if isinstance(node, str):
        digits = node.replace(",", "")
        if len(digits) > MAX_NUMBER_DIGITS + 1:  # + 1 for a decimal point
            return TOO_LONG
        return Fraction(digits)
    if node[0] == "-":
        value = evaluate(node[1])
        return -value if isinstance(value, Fraction) else value
    num, den = evaluate(node[1]), evaluate(node[2])
    if num is TOO_LONG or den is TOO_LONG:
        return TOO_LONG
    if num is None or den is None or den == 0:
        return None
    return num / den  # type: ignore[operator]


def _signed(node: Node, sign: int) -> Node:
    return ("-", node) if sign < 0 else node


def _spaces(text: str, pos: int) -> int:
    return _SPACES_RE.match(text, pos).end()  # type: ignore[union-attr]  (it always matches)


def _value(text: str, pos: int, depth: int) -> tuple[Node, int] | None:
    """``[sign] [$] atom [/ [sign] atom]`` at ``pos``: (value, end) or None when no number starts there."""
    sign, seen_sign, seen_money = 1, False, False
    pos = _spaces(text, pos)
    for _ in range(2):  # a sign and a dollar sign, in either order: "-$5", "$-5"
        char = text[pos : pos + 1]
        if char in _SIGNS and not seen_sign:
            sign, seen_sign, pos = _SIGNS[char], True, _spaces(text, pos + 1)
        elif (money := _MONEY_RE.match(text, pos)) is not None and not seen_money:
            seen_money, pos = True, _spaces(text, money.end())
        else:
            break
    first = _atom(text, pos, depth)
    if first is None:
        return None
    node, end = first
    slash = _spaces(text, end)
    if text.startswith("/", slash):
        den = _signed_atom(text, _spaces(text, slash + 1), depth)
        if den is not None:
            node, end = ("/", node, den[0]), den[1]
    return _signed(node, sign), end


def _signed_atom(text: str, pos: int, depth: int) -> tuple[Node, int] | None:
    """A denominator: ``[sign] atom`` (``1/-3``, ``1/(-3)``)."""
    sign = _SIGNS.get(text[pos : pos + 1], 0)
    found = _atom(text, _spaces(text, pos + 1) if sign else pos, depth)
    return None if found is None else (_signed(found[0], sign), found[1])


def _atom(text: str, pos: int, depth: int) -> tuple[Node, int] | None:
    """A decimal, a ``\\frac`` or a closed group at ``pos``: (value, end) or None."""
    decimal = _DECIMAL_RE.match(text, pos)
    if decimal is not None:
        return decimal.group(), decimal.end()
    if depth >= MAX_DEPTH:
        return None
    frac = _FRAC_RE.match(text, pos)
    if frac is not None:
        num = _value(text, frac.end(), depth + 1)
        middle = None if num is None else _FRAC_MIDDLE_RE.match(text, num[1])
        den = None if middle is None else _value(text, middle.end(), depth + 1)
        close = None if den is None else _FRAC_END_RE.match(text, den[1])
        if num is None or den is None or close is None:
            return None
        return ("/", num[0], den[0]), close.end()
    for opening, closing in _GROUPS:
        if text.startswith(opening, pos):
            inner = _value(text, pos + len(opening), depth + 1)
            if inner is None:
                return None
            close = _spaces(text, inner[1])
            return (inner[0], close + len(closing)) if text.startswith(closing, close) else None
    return None


def read_number(text: str, pos: int = 0) -> tuple[Value, int] | None:
    """The number starting exactly at ``pos`` (after at most ``MAX_SPACES`` spaces): (value, end), or None."""
    found = _value(text, pos, 0)
    return None if found is None else (evaluate(found[0]), found[1])


def _readings(text: str) -> Iterator[tuple[int, int, Node]]:
    """(start, end, node) of each number in ``text``, left to right, none overlapping.

    At each possible start the longest reading is taken; a sign right after a word character or a
    closing bracket is a binary operator, so the number starts after it.
    """
    pos, next_digit = 0, -1
    while (start := _START_RE.search(text, pos)) is not None:
        at = start.start()
        if next_digit < at:
            digit = _DIGIT_RE.search(text, at)
            if digit is None:
                return
            next_digit = digit.start()
        if next_digit - at > MAX_PREFIX:  # too far from any digit to start a number: skip ahead
            pos = next_digit - MAX_PREFIX
            continue
        binary = text[at] in _SIGNS and at > 0 and _OPERAND_END_RE.match(text, at - 1) is not None
        found = None if binary else _value(text, at, 0)
        if found is None:
            pos = at + 1
            continue
        yield at, found[1], found[0]
        pos = found[1]


def iter_numbers(text: str) -> Iterator[tuple[int, int, Value]]:
    """(start, end, value) of each number in ``text``, left to right, none overlapping."""
    for start, end, node in _readings(text):
        yield start, end, evaluate(node)


def first_number(text: str) -> Fraction | None:
    """The value of the first number in ``text`` that has one (``3/0`` has none); None when there is
    none or when the first one met that can be read is too long (``MAX_NUMBER_DIGITS``)."""
    return _first_value(node for _, _, node in _readings(text))


def last_number(text: str) -> Fraction | None:
    """As :func:`first_number`, from the end: only the numbers from the end back to the first one with
    a value are evaluated."""
    # Nodes only (mostly strings): a list of tuples for every number of a long text would make the
    # garbage collector rescan the heap as it grows.
    return _first_value(reversed([node for _, _, node in _readings(text)]))


def _first_value(nodes: Iterable[Node]) -> Fraction | None:
    for node in nodes:
        value = evaluate(node)
        if value is TOO_LONG:
            return None
        if value is not None:
            return value  # type: ignore[return-value]
    return None
