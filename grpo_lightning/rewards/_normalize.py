"""Normalising one final answer (a box's content or a gold answer) before it is parsed.

What datasets and models write around the value, removed or rewritten so that the parser sees the
value itself (:func:`normalize_answer`):

- LaTeX digit groups: ``10,\\!000``, ``1{,}234``, ``1\\,000``, ``1 000`` and thin spaces -> ``10000``...;
- a trailing full stop, comma, semicolon or LaTeX space: ``104.`` -> ``104``;
- dollar signs and math delimiters: ``\\$5``, ``$5$`` -> ``5``;
- a unit in ``\\text{}``/``\\mbox{}``/``\\mathrm{}`` after a value: ``7\\text{ hours}`` -> ``7``;
- a degree mark: ``30^\\circ``, ``30^{\\circ}``, ``30°`` -> ``30``;
- a percent word after a value: ``28 pct``, ``28percent`` -> ``28\\%``;
- a bare letter after a number is a variable, not a unit: ``2c`` is kept as the product ``2{c}``
  (math-verify's unit stripping reads ``2c`` as ``2``, ``2ab`` as ``2``, ``x + c`` as ``x +``).
  Units that are words or common abbreviations (``5 cm``, ``3 kms``, ``3 hours``) are still dropped.

Pure string functions, each linear in the length of the answer; answers longer than
``MAX_ANSWER_CHARS`` are not answers (a degenerate completion) and normalise to None.
"""

from __future__ import annotations

import re

from grpo_lightning.rewards.answers import join_digit_groups

#: A final answer longer than this is not parsed (the longest MATH answers are a few hundred characters).
MAX_ANSWER_CHARS = 1000

_DOLLARS_RE = re.compile(r"\\\$|\$")
_DELIMITERS_RE = re.compile(r"^\s*(?:\\\(|\\\[)(.*)(?:\\\)|\\\])\s*$", re.DOTALL)
# Trailing punctuation and LaTeX spacing: "104.", "5,", "x;", "7\,", "3\quad" (a lone trailing
# backslash is what is left of "\," or "\ " once the comma or space is gone).
_TRAILING_CHARS = " \t\r\n.,;\\"
_TRAILING_COMMANDS = ("\\!", "\\:", "\\quad", "\\qquad")
# A unit after a value: "7\text{ hours}", "5\,\mathrm{cm}^2", "12 \mbox{ apples}".
_UNIT_RE = re.compile(
    r"(?<=[\d}).\]])(?:\s|\\[,;: ])*"
    r"(?:\\(?:text|textrm|textnormal|mbox)\s*\{\s*[A-Za-z][A-Za-z .'-]*\}"
    r"|\\mathrm\s*\{\s*[A-Za-z][A-Za-z .'-]+\})"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?$"
)
_PERCENT_WORD_RE = re.compile(r"(?<=[\d}])\s{0,3}(?:pct|per\s?cent(?:age)?)\.?$", re.IGNORECASE)
_DEGREES_RE = re.compile(r"(?<=[\d}])\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree)\s*$")
# Unit abbreviations that may follow a number bare (math-verify drops them, rightly).
_UNIT_WORDS = frozenset(
    [
        "cm",
        "mm",
        "km",
        "kg",
        "mg",
        "ft",
        "in",
        "hr",
        "hrs",
        "lb",
        "lbs",
        "oz",
        "yd",
        "mi",
        "mph",
        "kmh",
        "sec",
        "min",
        "deg",
        "cc",
        "ml",
        "gm",
        "dm",
        "lt",
        "mt",
        "mtr",
        "ohm",
        "gal",
        "yr",
        "yrs",
        "am",
        "pm",
        "st",
        "nd",
        "rd",
        "th",
        "sq",
        "rs",
        "day",
        "man",
        "men",
    ]
)
_TRAILING_LETTERS_RE = re.compile(r"(?<=[\d}\s])([A-Za-z]{1,3})$")


def _strip_trailing(text: str) -> str:
    """``text`` without trailing punctuation and LaTeX spaces (linear: no regex anchored at the end)."""
    while True:
        stripped = text.rstrip(_TRAILING_CHARS)
        for command in _TRAILING_COMMANDS:
            if stripped.endswith(command):
                stripped = stripped[: -len(command)]
                break
        if stripped == text:
            return text
        text = stripped


def _is_unit_word(letters: str) -> bool:
    """A unit abbreviation (``cm``), or its plural (``kms``, ``hrs``)."""
    word = letters.lower()
    return word in _UNIT_WORDS or (word.endswith("s") and word[:-1] in _UNIT_WORDS)


def _protect_variable(match: re.Match[str]) -> str:
    letters = match.group(1)
    return letters if _is_unit_word(letters) else "{" + letters + "}"


def normalize_answer(text: str | None) -> str | None:
    """``text`` with the value's surroundings removed (see the module docstring); None when nothing
    is left or the answer is longer than ``MAX_ANSWER_CHARS``.

    ``"10,\\!000."`` -> ``"10000"``; ``"7\\text{ hours}."`` -> ``"7"``; ``"2c"`` -> ``"2{c}"``.
    """
    if text is None or len(text) > MAX_ANSWER_CHARS:
        return None
    text = _DOLLARS_RE.sub("", text).strip()
    delimited = _DELIMITERS_RE.match(text)
    if delimited is not None:
        text = delimited.group(1)
    text = join_digit_groups(text, plain_spaces=True)
    for _ in range(3):  # "7\text{ hours}." needs the full stop, then the unit, removed
        previous = text
        text = _DEGREES_RE.sub("", _UNIT_RE.sub("", _strip_trailing(text)))
        text = _PERCENT_WORD_RE.sub("\\%", text)
        if text == previous:
            break
    if len(text) > 1:
        text = _TRAILING_LETTERS_RE.sub(_protect_variable, text)
    return text or None
