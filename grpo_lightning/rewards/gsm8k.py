"""GSM8K-style numeric answer reward: 1.0 when the completion's final number equals the gold number.

Numbers are compared exactly as rationals (``18.0 == 18``, ``0.75 == 3/4``, ``0.333 != 1/3``), after
stripping what GSM8K answers carry around them: thousands commas, ``$``, units, ``%``, ``^\\circ``, a
trailing period.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Literal

from grpo_lightning._checks import check_choice
from grpo_lightning.answers import (
    HASH_MARKER,
    extract_gold_answer,
    find_last_boxed,
    last_number,
    parse_number,
)
from grpo_lightning.rewards._columns import gold_column
from grpo_lightning.rewards.registry import register_reward

Gsm8kMode = Literal["strict", "flexible"]


def final_answer_text(completion: str) -> str | None:
    """The completion's explicitly marked final answer: whatever follows the last ``####``, or the
    content of the last ``\\boxed{}``, whichever comes later in the text; None when neither is there."""
    hash_at = completion.rfind(HASH_MARKER)
    boxed = find_last_boxed(completion)
    if boxed is not None and boxed[0] > hash_at:
        return boxed[1]
    if hash_at >= 0:
        return completion[hash_at + len(HASH_MARKER) :]
    return None


class Gsm8kAccuracy:
    """Reward 1.0 if the completion's answer equals the gold ``answer`` numerically, else 0.0.

    Args:
        mode: ``"strict"`` reads the number after the last ``####`` (or inside the last ``\\boxed{}``,
            whichever comes last); a completion without either marker scores 0. ``"flexible"`` reads
            the last number anywhere in the completion (lm-eval's "flexible-extract").
        answer_column: the column holding the gold answer. A full GSM8K answer text works too: its
            ``#### N`` is extracted.

    Returns None (not applicable) for a completion whose gold answer holds no number.
    """

    def __init__(self, mode: Gsm8kMode = "strict", answer_column: str = "answer") -> None:
        check_choice("mode", mode, ("strict", "flexible"))
        self.mode = mode
        self.answer_column = answer_column
        self.__name__ = "gsm8k_accuracy" if mode == "strict" else f"gsm8k_accuracy_{mode}"

    def predicted_number(self, completion: str) -> Fraction | None:
        """The completion's answer as a ``Fraction`` (None if it has none), per ``mode``."""
        if self.mode == "flexible":
            return last_number(completion)
        return parse_number(final_answer_text(completion))

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Any
    ) -> list[float | None]:
        golds = gold_column(columns, self.answer_column, len(completions), self.__name__)
        rewards: list[float | None] = []
        for completion, gold_text in zip(completions, golds, strict=True):
            gold = parse_number(extract_gold_answer(gold_text))
            if gold is None:
                rewards.append(None)
                continue
            predicted = self.predicted_number(completion)
            rewards.append(1.0 if predicted is not None and predicted == gold else 0.0)
        return rewards

    def __repr__(self) -> str:
        return f"Gsm8kAccuracy(mode={self.mode!r}, answer_column={self.answer_column!r})"


def gsm8k_accuracy_reward(mode: Gsm8kMode = "strict", answer_column: str = "answer") -> Gsm8kAccuracy:
    """Factory for YAML and notebooks: ``gsm8k_accuracy_reward(mode="flexible")``."""
    return Gsm8kAccuracy(mode=mode, answer_column=answer_column)


gsm8k_accuracy = register_reward("gsm8k_accuracy")(Gsm8kAccuracy("strict"))
gsm8k_accuracy_flexible = register_reward("gsm8k_accuracy_flexible")(Gsm8kAccuracy("flexible"))
