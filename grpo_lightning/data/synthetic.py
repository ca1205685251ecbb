"""Synthetic math problems with worked solutions: the offline default data set.

Every problem is a chain of ``steps`` operations applied left to right to a starting number. The
solution writes one equation per step and ends with the GSM8K answer marker::

    question: "What is 12 + 7 - 3?"
    solution: "12+7=19, 19-3=16 #### 16"
    answer:   "16"

``style="word"`` tells the same chain as a short story ("Tom has 12 apples. He buys 7 more. Then he
gives 3 away. How many apples does Tom have now?"). ``style="phrased"`` asks for the same expression in
one of several other phrasings ("Compute 12 + 7 - 3.", "What's 12 + 7 - 3?"): the arithmetic style's
problems worded as a model trained only on "What is ...?" has never seen them. The difficulty knobs are the number of steps,
the operand range, the operations and whether intermediate results may go below zero. Generation is
seeded and uses its own ``random.Random``, so the same arguments give the same problems everywhere.
"""

from __future__ import annotations

import random
from typing import Literal

from grpo_lightning._checks import check_choice

Style = Literal["arithmetic", "word", "phrased"]

SUPPORTED_OPERATIONS = "+-*"
# Multipliers stay small so that products remain learnable by a tiny model (and by people).
MAX_MULTIPLIER = 9
_MAX_ATTEMPTS = 1000

_NAMES = (
    ("Tom", "he"),
    ("Mia", "she"),
    ("Sam", "he"),
    ("Ava", "she"),
    ("Leo", "he"),
    ("Zoe", "she"),
    ("Ben", "he"),
    ("Lily", "she"),
    ("Max", "he"),
    ("Emma", "she"),
    ("Omar", "he"),
    ("Nina", "she"),
)
# (singular, plural): "Leo has 1 coin", "Mia has 12 coins".
_OBJECTS = (
    ("apple", "apples"),
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("book", "books"),
    ("pencil", "pencils"),
    ("coin", "coins"),
    ("cookie", "cookies"),
    ("stamp", "stamps"),
    ("shell", "shells"),
    ("card", "cards"),
    ("balloon", "balloons"),
    ("candy", "candies"),
)
_ADD = ("{p} buys {n} more.", "{p} finds {n} more.", "{p} gets {n} more from a friend.", "{p} wins {n} more.")
_SUB = ("{p} gives {n} away.", "{p} loses {n}.", "{p} sells {n}.", "{p} uses {n}.")
# "{e}" is the expression; none of these is the arithmetic style's "What is {e}?".
_PHRASINGS = (
    "Compute {e}.",
    "Calculate {e}.",
    "Work out {e}.",
    "What's {e}?",
    "How much is {e}?",
    "Find {e}.",
)
_MUL = ("{p} ends up with {n} times as many.", "{p} gets enough to have {n} times as many.")


def generate_problems(
    n: int,
    *,
    seed: int = 0,
    min_steps: int = 1,
    max_steps: int = 2,
    max_operand: int = 20,
    operations: str = "+-",
    style: Style = "arithmetic",
    allow_negative: bool = False,
) -> list[dict[str, str]]:
    """``n`` problems, each ``{"question", "solution", "answer"}``; the same arguments give the same list.

    Args:
        n: number of problems (>= 0).
        seed: seed of the generator's private ``random.Random``.
        min_steps, max_steps: each problem has a uniformly drawn number of operations in this range.
        max_operand: operands of ``+`` and ``-`` (and the starting number) are drawn from
            ``1..max_operand``; multipliers from ``2..min(max_operand, 9)``.
        operations: which of ``"+-*"`` may appear, e.g. ``"+-"`` or ``"+-*"``; each step draws one
            uniformly. Chains are evaluated left to right; arithmetic questions add parentheses
            where ordinary precedence would differ ("What is (3 + 4) * 2?").
        style: ``"arithmetic"`` ("What is 12 + 7 - 3?"), ``"word"`` (a short story) or ``"phrased"``
            (the same expression in one of six other wordings: "Compute 12 + 7 - 3.", "Find ..."); with
            the same arguments it asks the same problems as ``"arithmetic"``.
        allow_negative: let intermediate and final results go below zero (arithmetic and phrased styles).
            Operands are always positive.

    Raises:
        ValueError: a knob is out of range; the message names it and the fix.
    """
    ops = _check_knobs(n, min_steps, max_steps, max_operand, operations, style, allow_negative)
    rng = random.Random(seed)
    # Wordings come from a stream of their own, so "phrased" asks the arithmetic style's problems.
    wording = random.Random(f"phrasing-{seed}")
    problems = []
    for _ in range(n):
        steps = rng.randint(min_steps, max_steps)
        start, chain = _sample_chain(rng, steps, max_operand, ops, allow_negative)
        if style == "word":
            question = _word_question(rng, start, chain)
        elif style == "phrased":
            question = wording.choice(_PHRASINGS).format(e=_expression(start, chain))
        else:
            question = f"What is {_expression(start, chain)}?"
        problems.append(
            {"question": question, "solution": _solution(start, chain), "answer": str(_value(start, chain))}
        )
    return problems


def _check_knobs(
    n: int,
    min_steps: int,
    max_steps: int,
    max_operand: int,
    operations: str,
    style: str,
    allow_negative: bool,
) -> str:
    """Validate the knobs; returns the distinct operations in a fixed order (so the seed alone decides)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r}: the number of problems must be an integer >= 0.")
    if min_steps < 1:
        raise ValueError(
            f"min_steps={min_steps}: a problem needs at least one operation; use min_steps >= 1."
        )
    if max_steps < min_steps:
        raise ValueError(f"max_steps={max_steps} is below min_steps={min_steps}; use max_steps >= min_steps.")
    if max_operand < 2:
        raise ValueError(
            f"max_operand={max_operand}: operands are drawn from 1..max_operand; use max_operand >= 2."
        )
    unknown = sorted(set(operations) - set(SUPPORTED_OPERATIONS))
    if not operations or unknown:
        raise ValueError(
            f"operations={operations!r}: give a non-empty string of operation symbols from "
            f"{SUPPORTED_OPERATIONS!r}, e.g. '+-' or '+-*'"
            + (f" (unknown: {''.join(unknown)!r})." if unknown else ".")
        )
    check_choice("style", style, ("arithmetic", "word", "phrased"))
    if allow_negative and style == "word":
        raise ValueError(
            "allow_negative=True needs style='arithmetic': a count of objects cannot go below zero."
        )
    if operations == "-" and not allow_negative and max_steps > max_operand - 1:
        raise ValueError(
            f"operations='-' with max_steps={max_steps} and max_operand={max_operand} cannot stay >= 0; "
            "raise max_operand, lower max_steps, add another operation or set allow_negative=True."
        )
    return "".join(op for op in SUPPORTED_OPERATIONS if op in operations)


def _sample_chain(
    rng: random.Random, steps: int, max_operand: int, ops: str, allow_negative: bool
) -> tuple[int, list[tuple[str, int]]]:
    """A starting number and ``steps`` (operation, operand) pairs; retries chains that would go negative."""
    max_multiplier = min(max_operand, MAX_MULTIPLIER)
    for _ in range(_MAX_ATTEMPTS):
        value = start = rng.randint(1, max_operand)
        chain: list[tuple[str, int]] = []
        for _ in range(steps):
            op = rng.choice(ops)
            if op == "*":
                operand = rng.randint(2, max_multiplier)
            elif op == "-" and not allow_negative:
                if value < 1:
                    break  # nothing left to take away: draw the chain again
                operand = rng.randint(1, min(max_operand, value))
            else:
                operand = rng.randint(1, max_operand)
            chain.append((op, operand))
            value = _apply(value, op, operand)
        if len(chain) == steps:
            return start, chain
    raise ValueError(  # only reachable with extreme knobs, e.g. operations='-' and many steps
        "Could not draw a problem that stays >= 0 with these knobs; raise max_operand, lower max_steps, "
        "add an operation or set allow_negative=True."
    )


def _apply(value: int, op: str, operand: int) -> int:
    return value + operand if op == "+" else value - operand if op == "-" else value * operand


def _value(start: int, chain: list[tuple[str, int]]) -> int:
    for op, operand in chain:
        start = _apply(start, op, operand)
    return start


def _solution(start: int, chain: list[tuple[str, int]]) -> str:
    """One equation per step, left to right: "12+7=19, 19-3=16 #### 16"."""
    equations, value = [], start
    for op, operand in chain:
        result = _apply(value, op, operand)
        equations.append(f"{value}{op}{operand}={result}")
        value = result
    return f"{', '.join(equations)} #### {value}"


def _expression(start: int, chain: list[tuple[str, int]]) -> str:
    """ "12 + 7 - 3": evaluates to the answer under ordinary precedence (parentheses where needed)."""
    expr, has_sum = str(start), False  # has_sum: the expression so far has a top-level + or -
    for op, operand in chain:
        if op == "*" and has_sum:
            expr, has_sum = f"({expr})", False
        expr = f"{expr} {op} {operand}"
        has_sum = has_sum or op in "+-"
    return expr


def _word_question(rng: random.Random, start: int, chain: list[tuple[str, int]]) -> str:
    """ "Tom has 12 apples. He buys 7 more. Then he gives 3 away. How many apples does Tom have now?" """
    name, pronoun = rng.choice(_NAMES)
    singular, objects = rng.choice(_OBJECTS)
    sentences = [f"{name} has {start} {singular if start == 1 else objects}."]
    for i, (op, operand) in enumerate(chain):
        template = rng.choice(_ADD if op == "+" else _SUB if op == "-" else _MUL)
        sentence = template.format(p=pronoun, n=operand)
        sentences.append(("Then " + sentence) if i > 0 else sentence[0].upper() + sentence[1:])
    sentences.append(f"How many {objects} does {name} have now?")
    return " ".join(sentences)
