"""GSM8K-style numeric answer reward: 1.0 when the completion's final number equals the gold number.

Numbers are compared exactly as rationals (``18.0 == 18``, ``0.75 == 3/4``, ``0.333 != 1/3``), after
stripping what GSM8K answers carry around them: thousands separators (``1,234``, ``10,\\!000``,
``1{,}234``, ``1\\,000``), ``$``, units, ``%``, ``^\\circ``, a trailing period.

Strict mode reads an explicitly marked final answer. A ``####`` line is an answer line when what
follows the marker is a number (``#### 72``, ``#### $1,200``, ``#### **72**``) or says it is the
answer (``#### Final answer: 72``; ``#### Final Answer`` alone takes the first number of the next
non-empty line). Any other ``####`` line is a markdown heading (``#### Step 2: multiply 6 by 7``,
``#### 2. Multiply the eggs``) and is skipped. The later of the last answer line and the last
complete ``\\boxed{}`` wins.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Literal

from grpo_lightning._checks import check_choice
from grpo_lightning.rewards._columns import gold_column, short
from grpo_lightning.rewards.answers import (
    answer_number,
    extract_gold_answer,
    find_last_boxed,
    join_digit_groups,
    last_hash_answer,
    last_number,
)
from grpo_lightning.rewards.conversation import completion_texts
from grpo_lightning.rewards.registry import register_reward

Gsm8kMode = Literal["strict", "flexible"]

def final_answer_text(completion: str) -> str | None:
    """The completion's explicitly marked final answer: the answer of the last ``####`` answer line,
    or the content of the last ``\\boxed{}``, whichever comes later in the text; None when neither is there."""
    marked = last_hash_answer(completion)
    boxed = find_last_boxed(completion)
    if boxed is not None and (marked is None or boxed[0] > marked[0]):
        return boxed[1]
    return marked[1] if marked is not None else None


class Gsm8kAccuracy:
    """Reward 1.0 if the completion's answer equals the gold ``answer`` numerically, else 0.0.

    Args:
        mode: ``"strict"`` reads the number of the last ``####`` answer line (or inside the last
            ``\\boxed{}``, whichever comes last); markdown headings ``#### Step 2: ...`` are not answer
            lines; a completion without either marker scores 0. ``"flexible"`` reads the last number
            anywhere in the completion (lm-eval's "flexible-extract").
        answer_column: the column holding the gold answer. A full GSM8K answer text works too: its
            ``#### N`` is extracted.

    Returns None (not applicable) for a completion whose gold answer holds no number; the first such
    gold is named in a warning; ``unusable_golds`` counts the completions scored None this way.
    """

    def __init__(self, mode: Gsm8kMode = "strict", answer_column: str = "answer") -> None:
        check_choice("mode", mode, ("strict", "flexible"))
        self.mode = mode
        self.answer_column = answer_column
        self.__name__ = "gsm8k_accuracy" if mode == "strict" else f"gsm8k_accuracy_{mode}"
        self.unusable_golds = 0

    def predicted_number(self, completion: str) -> Fraction | None:
        """The completion's answer as a ``Fraction`` (None if it has none), per ``mode``."""
        if self.mode == "flexible":
            return last_number(join_digit_groups(completion))
        return answer_number(final_answer_text(completion))

    def extract_answer(self, completion: str) -> Fraction | None:
        """The answer this completion votes for in maj@k: :meth:`predicted_number` (equal values,
        however written, are one answer)."""
        return self.predicted_number(completion)

    def gold_number(self, gold_text: Any) -> Fraction | None:
        """The gold answer's number (None if it has none, with one warning per reward object)."""
        value = answer_number(extract_gold_answer(gold_text))
        if value is None:
            self.unusable_golds += 1
            if self.unusable_golds == 1:
                warnings.warn(
                    f"{self.__name__}: the gold answer {short(gold_text)!r} holds no number, so its "
                    "completions score None (left out of the statistics). Further unusable gold answers "
                    "are counted in .unusable_golds without a warning.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return value

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Any
    ) -> list[float | None]:
        golds = gold_column(columns, self.answer_column, len(completions), self.__name__)
        rewards: list[float | None] = []
        for completion, gold_text in zip(completion_texts(completions), golds, strict=True):
            gold = self.gold_number(gold_text)
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
