"""Format rewards: 1.0 when the completion ends in a readable answer in the marked place, else 0.0.

Presets:

- ``"answer"`` (default): some reasoning (a letter or digit), then a final answer that ends the
  completion, either
  - a last line ``#### <answer>`` whose answer is a number, read as ``gsm8k_accuracy`` reads it
    (``#### 16``, ``#### $1,200.``, ``#### -(1/3)``, ``#### Final answer: 72``); ``#### <prose>``,
    ``##### prose`` and markdown headings (``#### Step 2: add``) are not answers; or
  - a last complete ``\\boxed{...}`` followed only by closing punctuation and whitespace (``$``,
    ``.``, ``\\]``, ``)``, ``**``) whose content is an answer (:func:`readable_answer`): a number, an
    expression, a short text answer. ``\\boxed{}``, ``\\boxed{ }``, ``\\boxed{...}``, ``\\boxed{answer}``
    and a sentence in a box are not.
  ``"12+7=19, 19-3=16 #### 16"`` and ``"... so the answer is $\\boxed{16}$."`` both pass.
- ``"think"``: reasoning inside ``<think>...</think>`` with no other think tags, followed by an answer:
  a readable last box if the answer has a box, else a ``####`` number if it has a marker, else a number
  anywhere in it. The opening tag may be missing, because many chat templates put ``<think>`` in the
  prompt (DeepSeek-R1, Qwen3).

Why a readable answer and not just the marker: when the accuracy reward is equal within a group,
group normalisation makes the format reward the whole signal, and a model learns whatever it pays
for (``#### 10`` lines repeated, or the prompt's literal ``\\boxed{}`` echoed).

Both presets find the marker with string searches from the end and read a bounded part of the text:
linear time on any input. A ``pattern`` of your own is a regular expression searched with
``re.search``; its running time is the pattern's (nested or adjacent quantifiers over the same
characters can take quadratic time on long completions).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from grpo_lightning._checks import check_choice
from grpo_lightning.rewards._normalize import normalize_answer
from grpo_lightning.rewards.answers import (
    HASH_MARKER,
    MAX_LINE_CHARS,
    answer_number,
    find_last_box_span,
    hash_answer,
    last_number,
)
from grpo_lightning.rewards.conversation import completion_texts
from grpo_lightning.rewards.registry import register_reward

FormatPreset = Literal["answer", "think"]

#: What may follow the final box: closing math delimiters, emphasis, a full stop, whitespace.
BOX_CLOSING_CHARS = " \t\r\n$.*\\])"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# A letter or digit in any script: what reasoning must hold ("$" or "#" alone is none).
_REASONING_RE = re.compile(r"[^\W_]")
# LaTeX commands that format or stand in for an answer without being one.
_NOT_VALUES = frozenset(
    [
        "text",
        "textbf",
        "textit",
        "textrm",
        "textnormal",
        "mathrm",
        "mathbf",
        "mathit",
        "mbox",
        "left",
        "right",
        "displaystyle",
        "quad",
        "qquad",
        "ldots",
        "dots",
        "cdots",
        "vdots",
        "square",
        "Box",
        "blacksquare",
        "boxed",
        "fbox",
        "underline",
        "phantom",
        "hspace",
    ]
)
_COMMAND_RE = re.compile(r"\\([A-Za-z]+)")
_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]+")
# Letters that name the answer instead of giving it, as a model copies them from a prompt.
_PLACEHOLDERS = frozenset(["answer", "ans", "youranswer", "finalanswer", "theanswer", "blank"])
#: More words of two or more letters than this in a box make it a sentence, not an answer.
MAX_ANSWER_WORDS = 3


def readable_answer(text: str) -> bool:
    """Whether a box's content is an answer: after :func:`~grpo_lightning.rewards._normalize.normalize_answer`
    it holds a digit, a letter or a value command (``\\pi``, ``\\infty``, ``\\sqrt``), is not a placeholder
    (``answer``, ``\\text{your answer}``, ``\\square``, ``\\ldots``) and has at most ``MAX_ANSWER_WORDS``
    words of two or more letters. Linear in ``len(text)``."""
    normal = normalize_answer(text)
    if normal is None:
        return False
    commands = _COMMAND_RE.findall(normal)
    words = _WORD_RE.findall(normal)
    if sum(len(word) >= 2 for word in words) > MAX_ANSWER_WORDS:
        return False
    if "".join(words).lower() in _PLACEHOLDERS and not any(c.isdigit() for c in normal):
        return False
    return any(c.isdigit() for c in normal) or bool(words) or any(c not in _NOT_VALUES for c in commands)


def _has_reasoning(text: str, end: int) -> bool:
    return _REASONING_RE.search(text, 0, end) is not None


def _start_of_marker_lines(body: str, line_start: int, marker: int) -> int:
    """Where the reasoning before the final ``####`` line ends: before the marker on its line, or, when
    that line starts with the marker, before the ``####`` lines right above it (``#### 10`` repeated
    is no reasoning). Each line is visited once."""
    if body[line_start:marker].strip():
        return marker
    end = line_start
    while end > 0:
        previous = body.rfind("\n", 0, end - 1) + 1
        line = body[previous : end - 1].strip()
        if line and not line.startswith(HASH_MARKER):
            break
        end = previous
    return end


def ends_with_hash_answer(text: str) -> bool:
    """Whether the last line of ``text`` (trailing whitespace aside) is ``#### <number>``, after
    reasoning other than ``####`` lines."""
    body = text.rstrip()
    line_start = body.rfind("\n") + 1
    at = body.rfind(HASH_MARKER, line_start)
    if at < 0:
        return False
    first = at
    while first > line_start and body[first - 1] == "#":  # "##### 5": the run starts earlier
        first -= 1
    if not _has_reasoning(body, _start_of_marker_lines(body, line_start, first)):
        return False
    start = at + len(HASH_MARKER)
    answer = hash_answer(body[start : start + MAX_LINE_CHARS])
    return answer_number(answer) is not None


def ends_with_boxed_answer(text: str) -> bool:
    """Whether ``text`` ends with a complete box holding a readable answer after reasoning, closing
    punctuation aside."""
    found = find_last_box_span(text)
    if found is None:
        return False
    start, end, content = found
    if text[end:].strip(BOX_CLOSING_CHARS):
        return False
    return _has_reasoning(text, start) and readable_answer(content)


def answer_format(completion: str) -> bool:
    """The ``"answer"`` preset (see the module docstring)."""
    return ends_with_hash_answer(completion) or ends_with_boxed_answer(completion)


def think_format(completion: str) -> bool:
    """The ``"think"`` preset (see the module docstring)."""
    text = completion.lstrip()
    if text.startswith(THINK_OPEN):
        text = text[len(THINK_OPEN) :]
    close = text.find(THINK_CLOSE)
    if close < 0:
        return False
    reasoning, answer = text[:close], text[close + len(THINK_CLOSE) :]
    if not reasoning.strip() or THINK_OPEN in reasoning or THINK_OPEN in answer or THINK_CLOSE in answer:
        return False
    box = find_last_box_span(answer)
    if box is not None:
        return readable_answer(box[2])
    marker = answer.rfind(HASH_MARKER)
    if marker >= 0:
        start = marker + len(HASH_MARKER)
        return answer_number(hash_answer(answer[start : start + MAX_LINE_CHARS])) is not None
    return last_number(answer) is not None


PRESETS: dict[str, Callable[[str], bool]] = {"answer": answer_format, "think": think_format}


class FormatReward:
    """Reward 1.0 for completions in the expected format, 0.0 otherwise.

    Args:
        preset: ``"answer"`` or ``"think"`` (see the module docstring); not allowed with ``pattern``.
        pattern: a regular expression of your own, searched with ``re.search``.
        flags: ``re`` flags for ``pattern``, e.g. ``re.DOTALL`` (2**4 = 16) or ``re.MULTILINE`` (8).
    """

    def __init__(
        self, preset: FormatPreset | None = None, pattern: str | None = None, flags: int = 0
    ) -> None:
        if pattern is not None and preset is not None:
            raise ValueError(
                f"FormatReward: give preset={preset!r} or pattern={pattern!r}, not both (a pattern "
                "replaces the preset)."
            )
        if pattern is None and flags:
            raise ValueError(f"FormatReward: flags={flags} apply to a pattern; the presets take none.")
        self.pattern = pattern
        self.regex: re.Pattern[str] | None = None
        if pattern is not None:
            self.preset = None
            try:
                self.regex = re.compile(pattern, flags)
            except re.error as err:
                raise ValueError(
                    f"FormatReward: pattern {pattern!r} is not a valid regular expression: {err}."
                ) from err
            self.__name__ = "format_reward_custom"
            return
        self.preset = "answer" if preset is None else preset
        check_choice("preset", self.preset, PRESETS)
        self.__name__ = "format_reward" if self.preset == "answer" else f"{self.preset}_format_reward"

    def matches(self, completion: str) -> bool:
        """Whether one completion is in the expected format."""
        if self.regex is not None:
            return self.regex.search(completion) is not None
        return PRESETS[self.preset](completion)  # type: ignore[index]  (a preset when no pattern)

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Any
    ) -> list[float | None]:
        return [1.0 if self.matches(completion) else 0.0 for completion in completion_texts(completions)]

    def __repr__(self) -> str:
        if self.pattern is not None:
            return f"FormatReward(pattern={self.pattern!r})"
        return f"FormatReward(preset={self.preset!r})"


format_reward = register_reward("format_reward")(FormatReward("answer"))
think_format_reward = register_reward("think_format_reward")(FormatReward("think"))
