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

import re
import warnings
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Literal

from grpo_lightning._checks import check_choice
from grpo_lightning.answers import (
    HASH_MARKER,
    extract_gold_answer,
    find_last_boxed,
    join_digit_groups,
    last_number,
    parse_number,
)
from grpo_lightning.number_reader import read_number
from grpo_lightning.rewards._columns import gold_column, short
from grpo_lightning.rewards.registry import register_reward

Gsm8kMode = Literal["strict", "flexible"]

#: Characters of a ``####`` line (or of the line after a bare "Final Answer" heading) that are read.
MAX_LINE_CHARS = 300
# Markdown emphasis and math delimiters that may wrap the answer: "**72**", "$72$", "\(72\)".
_WRAPPING = r"(?:[*_\s]|\\\(|\$)*"
_WRAPPING_RE = re.compile(_WRAPPING)
# A numbered markdown heading: "#### 2. Multiply the eggs", "#### 3) Add", "#### (1) Add".
_NUMBERED_HEADING_RE = re.compile(r"\s*\(?\d{1,2}[.)]\s+[A-Za-z]")
# "Answer", "Final Answer:", "**The final answer is**", followed by the answer or by nothing.
_ANSWER_LABEL_RE = re.compile(
    _WRAPPING
    + r"(?:the\s+)?(?:final\s+)?answer\b[*_]*(?:\s*(?:is\b|[:=])|\s*$)"
    + _WRAPPING
    + r"(?P<rest>.*)$",
    re.IGNORECASE,
)


def _starts_with_number(line: str) -> bool:
    """Whether ``line`` begins, after markdown emphasis and math delimiters, with a number (``-(1/3)``,
    ``$1,200``, ``\\frac{3}{4}``) or a box."""
    at = _WRAPPING_RE.match(line).end()  # type: ignore[union-attr]  (it always matches)
    return line.startswith("\\boxed", at) or read_number(line, at) is not None


def hash_answer(line: str, following: str = "") -> str | None:
    """The answer a ``####`` line gives (``line``: what follows the marker on its line), or None if it
    is a heading. ``following`` is the text after that line, read when the line is a bare label."""
    if _starts_with_number(line):
        return None if _NUMBERED_HEADING_RE.match(line) else line
    label = _ANSWER_LABEL_RE.match(line)
    if label is None and line.strip():
        return None  # a heading
    if label is not None and label.group("rest").strip():
        return label.group("rest")
    # A bare label, or "####" alone on its line: the answer is on the next non-empty line.
    for next_line in following[:MAX_LINE_CHARS].splitlines():
        if next_line.strip():
            return next_line
    return None


def last_hash_answer(completion: str) -> tuple[int, str] | None:
    """(marker position, answer text) of the last ``####`` line that gives an answer (see the module
    docstring); None when there is none. Each marker costs at most ``2 * MAX_LINE_CHARS``."""
    end = len(completion)
    while (at := completion.rfind(HASH_MARKER, 0, end)) >= 0:
        end = at
        start = at + len(HASH_MARKER)
        line_end = completion.find("\n", start, start + MAX_LINE_CHARS)
        line_end = start + MAX_LINE_CHARS if line_end < 0 else line_end
        line = completion[start:line_end].lstrip("#")  # "##### 5" has its marker at the last four
        answer = hash_answer(line, completion[line_end : line_end + 2 * MAX_LINE_CHARS])
        if answer is not None:
            return at, answer
    return None


def answer_number(answer: str | None) -> Fraction | None:
    """The number a marked answer (a ``####`` answer, a box's content, a gold answer) gives: digit
    groups joined (plain spaces too: it is one answer), then its first number; None if it has none."""
    return None if answer is None else parse_number(join_digit_groups(answer, plain_spaces=True))


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
        for completion, gold_text in zip(completions, golds, strict=True):
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
