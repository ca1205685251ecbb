"""math-verify's comparison of one normalised answer with one gold answer, and the checker process.

This file imports nothing from grpo_lightning, so a checker process (``_checker_pool``: it calls
:func:`prepare`, then :func:`handle` per request) loads only math-verify and sympy, not torch.
math-verify is imported on first use, never when the package is imported.

On top of math-verify, six readings it gets wrong are guarded:

- an equation with no variables is the statement of a value: ``6 \\times 7 = 42`` and
  ``\\begin{vmatrix}1&2\\\\3&4\\end{vmatrix} = -2`` stand for their right-hand side (math-verify
  compares two such statements as always equal, whatever the values);
- an equation in variables is not a value: ``11x+6y+5z+86=0`` does not match a gold ``0``; only an
  assignment (a name on the left: ``x = 5``, ``f(x) = 2x``, ``AB = 5``) matches a gold value by its
  right-hand side;
- a tuple of names on the left is an assignment too: ``(x, y) = (5, 8)``, ``[a, b] = [1, 2]`` and
  ``\\left(x, y\\right) = (5, 8)`` match the gold ``(5, 8)`` by their right-hand side;
- a box math-verify's LaTeX reader cannot read is unreadable (0.0), not read by its plain-expression
  extractor, which takes the last number: ``(x+1, y) = (5, 8)`` matched a gold ``8``;
- the Greek letters math-verify reads as constants or functions are symbols like the other Greek
  letters: ``\\gamma`` and ``\\Gamma`` (Euler's constant, or the Gamma function before a
  parenthesis: ``(\\gamma^2-1)`` became infinite) and ``\\Pi`` (read as pi); ``\\pi`` stays pi;
- a gold that parses to something without a finite value (``05:00`` is read as 5/0, complex
  infinity) is unparseable, not a gold every completion fails.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

GOLD_OK = "ok"
GOLD_UNPARSEABLE = "unparseable"
GOLD_NOT_FINITE = "not_finite"

# Greek letters latex2sympy turns into constants or functions, written as an accented letter, which it
# reads as a plain symbol in every position (``\check{\gamma}^2``, ``2\check{\gamma}``, ``\check{\gamma}_1``).
_GREEK_CONSTANTS_RE = re.compile(r"\\(gamma|Gamma|Pi)(?![A-Za-z])|([γΓΠ])")
_GREEK_NAMES = {"γ": "gamma", "Γ": "Gamma", "Π": "Pi"}
# The brackets a tuple of names may stand in on the left of "=", after \left and \right are dropped.
_TUPLE_BRACKETS = (("(", ")"), ("[", "]"), ("\\{", "\\}"), ("\\langle", "\\rangle"))
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![A-Za-z])")


@lru_cache(maxsize=1)
def _math_verify() -> dict[str, Any]:
    """math-verify's entry points and the sympy classes the guards need, imported once."""
    import sympy
    from math_verify import LatexExtractionConfig, parse, verify

    return {
        "parse": parse,
        "verify": verify,
        # LaTeX only: where it cannot read a box, math-verify's plain-expression extractor picks the
        # last number in it ("(x+1, y) = (5, 8)" read as 8), a false match for a gold 8.
        "config": [LatexExtractionConfig()],
        "Equality": sympy.Equality,
        "Symbol": sympy.Symbol,
        "Mul": sympy.Mul,
        "AppliedUndef": sympy.core.function.AppliedUndef,
        "not_finite": (sympy.zoo, sympy.nan),
    }


def parse_answer(text: str) -> Any | None:
    """math-verify's reading of ``text`` as the content of a ``\\boxed{}``; None when unreadable.

    No time limit here: the limit is the checker process's, enforced from outside (math-verify's own
    uses ``signal.alarm``, which neither works off the main thread nor stops work inside C code).
    """
    mv = _math_verify()
    parsed = mv["parse"](
        "\\boxed{" + greek_as_symbols(text) + "}",
        extraction_config=mv["config"],
        # No fallback to the raw string: an answer math-verify cannot read is "unparseable", and a
        # string match between two unreadable answers would reward garbage.
        fallback_mode="no_fallback",
        parsing_timeout=None,
    )
    if not parsed:
        return None
    value = parsed[0]
    if isinstance(value, mv["Equality"]) and not value.free_symbols:
        return value.rhs  # "6 \times 7 = 42" states the value 42
    return value


def greek_as_symbols(text: str) -> str:
    """``text`` with ``\\gamma``, ``\\Gamma``, ``\\Pi`` (and ``γ``, ``Γ``, ``Π``) written so that they
    parse as symbols: ``m_p c^2(\\gamma^2-1)`` -> ``m_p c^2(\\check{\\gamma}^2-1)``."""
    return _GREEK_CONSTANTS_RE.sub(
        lambda m: "\\check{\\" + (m.group(1) or _GREEK_NAMES[m.group(2)]) + "}", text
    )


@lru_cache(maxsize=4096)
def parse_gold(text: str) -> tuple[str, Any]:
    """(status, value) of a gold answer: ``GOLD_OK`` with its value, or why it cannot be used.

    Each gold answer is scored against G completions: parse it once (sympy objects are immutable).
    """
    value = parse_answer(text)
    if value is None:
        return GOLD_UNPARSEABLE, None
    mv = _math_verify()
    if hasattr(value, "has") and value.has(*mv["not_finite"]):
        return GOLD_NOT_FINITE, None
    return GOLD_OK, value


def _is_name(expr: Any) -> bool:
    """A name a value can be given to: ``x``, ``a_n``, ``f(x)``, ``AB`` (read as a product of letters)."""
    mv = _math_verify()
    if isinstance(expr, (mv["Symbol"], mv["AppliedUndef"])):
        return True
    return isinstance(expr, mv["Mul"]) and all(isinstance(arg, mv["Symbol"]) for arg in expr.args)


def _split_top_level_commas(text: str) -> list[str]:
    """``text`` split at the commas outside any brackets: ``"x, f(a, b)"`` -> ``["x", " f(a, b)"]``."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def tuple_assignment_value(text: str) -> str | None:
    """The right-hand side of ``text`` when it assigns to a tuple of names (``(x, y) = (5, 8)``,
    ``[a, b] = [1, 2]``, ``\\left(x, y\\right) = ...``); None for anything else.

    The left side must be two or more names (what :func:`_is_name` accepts) in brackets, with the
    only ``=`` of the text after it.
    """
    if text.count("=") != 1:
        return None
    lhs, _, rhs = text.partition("=")
    lhs, rhs = _LEFT_RIGHT_RE.sub("", lhs).strip(), rhs.strip()
    if not rhs or lhs[-1:] in "<>!:\\":  # "<=", ">=", "!=", ":=" are not assignments of values
        return None
    for opening, closing in _TUPLE_BRACKETS:
        if lhs.startswith(opening) and lhs.endswith(closing) and len(lhs) > len(opening) + len(closing):
            names = _split_top_level_commas(lhs[len(opening) : -len(closing)])
            if len(names) >= 2 and all(_reads_as_name(name) for name in names):
                return rhs
            return None
    return None


def _reads_as_name(text: str) -> bool:
    value = parse_answer(text) if text.strip() else None
    return value is not None and _is_name(value)


def _is_equation_in_variables(value: Any) -> bool:
    """An equation that is not an assignment ``name = ...`` (after :func:`parse_answer`'s reading)."""
    return isinstance(value, _math_verify()["Equality"]) and not _is_name(value.lhs)


def check(gold: str, answer: str, float_rounding: int) -> float | None:
    """1.0 if ``answer`` is equivalent to ``gold``, 0.0 if not or unreadable; None if the gold is unusable.

    Both are normalised answer texts (the content of a box, without the ``\\boxed{}``).
    """
    status, gold_value = parse_gold(gold)
    if status != GOLD_OK:
        return None
    mv = _math_verify()
    assigned = None if isinstance(gold_value, mv["Equality"]) else tuple_assignment_value(answer)
    value = parse_answer(answer if assigned is None else assigned)
    if value is None:
        return 0.0
    if _is_equation_in_variables(value) and not isinstance(gold_value, mv["Equality"]):
        return 0.0  # math-verify would compare the right-hand side alone: "11x+6y+5z+86=0" vs "0"
    # Gold first: math-verify's comparison is not symmetric (assignments, intervals).
    correct = mv["verify"]([gold_value], [value], float_rounding=float_rounding, timeout_seconds=None)
    return 1.0 if correct else 0.0


def handle(request: list[Any]) -> Any:
    """One request of the checker protocol: ``["gold", text]`` or ``["check", gold, answer, rounding]``."""
    kind, *args = request
    if kind == "gold":
        return parse_gold(*args)[0]
    if kind == "check":
        return check(*args)
    raise ValueError(f"unknown checker request {kind!r}")


def prepare() -> None:
    """A checker process's start: math-verify imported before the first request's time limit runs."""
    # The pool enforces the time limit, so math-verify's "Timeout is disabled" notice is noise.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _math_verify()
