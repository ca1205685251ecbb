"""math-verify's comparison of one normalised answer with one gold answer, and the checker process.

This file imports nothing from grpo_lightning, so the checker process (:func:`main`, started by
``grpo_lightning.rewards._checker_pool``) loads only math-verify and sympy, not torch. math-verify is
imported on first use, never when the package is imported.

On top of math-verify, three readings it gets wrong are guarded:

- an equation with no variables is the statement of a value: ``6 \\times 7 = 42`` and
  ``\\begin{vmatrix}1&2\\\\3&4\\end{vmatrix} = -2`` stand for their right-hand side (math-verify
  compares two such statements as always equal, whatever the values);
- an equation in variables is not a value: ``11x+6y+5z+86=0`` does not match a gold ``0``; only an
  assignment (a name on the left: ``x = 5``, ``f(x) = 2x``, ``AB = 5``) matches a gold value by its
  right-hand side;
- a gold that parses to something without a finite value (``05:00`` is read as 5/0, complex
  infinity) is unparseable, not a gold every completion fails.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from functools import lru_cache
from typing import Any

GOLD_OK = "ok"
GOLD_UNPARSEABLE = "unparseable"
GOLD_NOT_FINITE = "not_finite"
READY = "ready"


@lru_cache(maxsize=1)
def _math_verify() -> dict[str, Any]:
    """math-verify's entry points and the sympy classes the guards need, imported once."""
    import sympy
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    return {
        "parse": parse,
        "verify": verify,
        "config": [LatexExtractionConfig(), ExprExtractionConfig()],
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
        "\\boxed{" + text + "}",
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
    value = parse_answer(answer)
    if value is None:
        return 0.0
    mv = _math_verify()
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


def main() -> None:
    """The checker process: one JSON request per line on stdin, one JSON reply per line on stdout.

    The first line written is ``"ready"`` (after the imports). Replies are ``["ok", result]`` or
    ``["error", message]``. It exits when stdin closes (its parent is gone).
    """
    import logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(1), "w", buffering=1, encoding="ascii")
    os.dup2(2, 1)
    # The parent enforces the time limit, so math-verify's "Timeout is disabled" notice is noise.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _math_verify()
    replies.write(json.dumps(READY) + "\n")
    for line in sys.stdin:
        try:
            reply = ["ok", handle(json.loads(line))]
        except Exception as err:  # reported to the parent, which names the completion
            reply = ["error", f"{type(err).__name__}: {err}"]
        replies.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
