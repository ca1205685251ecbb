"""MATH-style reward: the completion's last ``\\boxed{}`` checked against the gold answer with math-verify.

math-verify compares symbolically (``\\frac{1}{2}`` == ``0.5``, ``\\sqrt{8}`` == ``2\\sqrt{2}``, intervals,
sets, matrices, ``\\text{}`` answers). Its timeouts use ``signal.alarm``, which only works on the main
thread of the main interpreter; off the main thread (a reward thread pool, a callback thread) this
reward turns the timeout off instead of failing, so a pathological expression could then take long.
DataLoader worker processes run rewards on their own main thread, where the timeout stays on.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from grpo_lightning.answers import extract_gold_answer, extract_last_boxed
from grpo_lightning.rewards._columns import gold_column
from grpo_lightning.rewards.registry import register_reward


def _timeout_here(timeout_seconds: int | None) -> int | None:
    """math-verify's signal-based timeout only works on the main thread: elsewhere switch it off."""
    if threading.current_thread() is threading.main_thread():
        return timeout_seconds
    return None


def _parse_boxed(expression: str, timeout_seconds: int | None) -> list[Any]:
    """math-verify's parse of ``expression`` read as the content of a ``\\boxed{}``; [] if unparseable."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(
        "\\boxed{" + expression + "}",
        extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
        # No fallback to the raw string: an answer math-verify cannot read is "unparseable", and a
        # string match between two unreadable answers would reward garbage.
        fallback_mode="no_fallback",
        parsing_timeout=_timeout_here(timeout_seconds),
    )


@lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout_seconds: int | None) -> tuple[Any, ...]:
    # Each gold answer is scored against G completions: parse it once. Sympy objects are immutable.
    return tuple(_parse_boxed(gold, timeout_seconds))


class MathAccuracy:
    """Reward 1.0 if the last ``\\boxed{}`` of the completion is equivalent to the gold answer, else 0.0.

    Args:
        answer_column: the column holding the gold answer: a bare answer (``\\frac{14}{3}``), a MATH
            solution (its last ``\\boxed{}`` is used) or a GSM8K answer text (its ``#### N``).
        timeout_seconds: math-verify's time limit per parse and per comparison on the main thread
            (None: no limit). Off the main thread there is never a limit (see the module docstring).
        float_rounding: decimal places math-verify rounds floats to before comparing.

    Returns 0.0 for a completion without a complete ``\\boxed{}`` or whose box cannot be parsed, and
    None (not applicable) when the gold answer itself cannot be parsed: that is a data problem, not
    a wrong completion, so it must not pull the group's statistics down.
    """

    __name__ = "math_accuracy"

    def __init__(
        self, answer_column: str = "answer", timeout_seconds: int | None = 5, float_rounding: int = 6
    ) -> None:
        self.answer_column = answer_column
        self.timeout_seconds = timeout_seconds
        self.float_rounding = float_rounding

    def score(self, completion: str, gold_text: str | None) -> float | None:
        """The reward of one completion against one gold answer text."""
        from math_verify import verify

        gold_answer = extract_gold_answer(gold_text)
        if gold_answer is None:
            return None
        gold = _parse_gold(gold_answer, self.timeout_seconds)
        if not gold:
            return None
        predicted_text = extract_last_boxed(completion)
        if not predicted_text:
            return 0.0
        predicted = _parse_boxed(predicted_text, self.timeout_seconds)
        if not predicted:
            return 0.0
        # Gold first: math-verify's comparison is not symmetric (assignments, intervals).
        correct = verify(
            list(gold),
            predicted,
            float_rounding=self.float_rounding,
            timeout_seconds=_timeout_here(self.timeout_seconds),
        )
        return 1.0 if correct else 0.0

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Any
    ) -> list[float | None]:
        golds = gold_column(columns, self.answer_column, len(completions), self.__name__)
        return [self.score(completion, gold) for completion, gold in zip(completions, golds, strict=True)]

    def __repr__(self) -> str:
        return (
            f"MathAccuracy(answer_column={self.answer_column!r}, timeout_seconds={self.timeout_seconds}, "
            f"float_rounding={self.float_rounding})"
        )


def math_accuracy_reward(
    answer_column: str = "answer", timeout_seconds: int | None = 5, float_rounding: int = 6
) -> MathAccuracy:
    """Factory for YAML and notebooks: ``math_accuracy_reward(answer_column="final_answer")``."""
    return MathAccuracy(
        answer_column=answer_column, timeout_seconds=timeout_seconds, float_rounding=float_rounding
    )


math_accuracy = register_reward("math_accuracy")(MathAccuracy())
