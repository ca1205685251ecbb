"""Format reward: 1.0 when the completion has the expected shape (a regular expression), else 0.0.

Presets:

- ``"answer"`` (default): some reasoning, then a final answer that ends the completion: a last line
  ``#### <answer>`` or a ``\\boxed{...}`` followed only by closing punctuation (``$``, ``.``, ``\\]``, ``**``).
  ``"12+7=19, 19-3=16 #### 16"`` and ``"... so the answer is $\\boxed{16}$."`` both pass.
- ``"think"``: reasoning inside ``<think>...</think>`` followed by a non-empty answer, with no other
  think tags. The opening tag may be missing, because many chat templates put ``<think>`` in the
  prompt (DeepSeek-R1, Qwen3).

Any other pattern can be given; it is searched with ``re.search`` (anchor it with ``^``/``\\Z`` for a
whole-completion match). Patterns are compiled once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from grpo_lightning._checks import check_choice
from grpo_lightning.rewards.registry import register_reward

FormatPreset = Literal["answer", "think"]

# A brace group nested up to three levels deep (\boxed{\frac{\sqrt{2}}{2}}): the re module has no
# recursion, and deeper nesting does not occur in final answers.
_BRACES = r"\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}"
# Both alternatives are anchored at the start and the lazy reasoning part can only stop at a
# marker, so a failed match costs one pass over the text, not one per start position.
ANSWER_PATTERN = (
    r"\A\s*\S[\s\S]*?"
    r"(?:####[ \t]*\S[^\n]*"
    r"|\\boxed\s*" + _BRACES + r"[\s$.*\\\])]*)"
    r"\s*\Z"
)
_NO_TAG = r"(?:(?!</?think>)[\s\S])"
THINK_PATTERN = r"\A\s*(?:<think>)?" + _NO_TAG + r"+?</think>\s*(?!</?think>)\S" + _NO_TAG + r"*\Z"

PRESETS: dict[str, str] = {"answer": ANSWER_PATTERN, "think": THINK_PATTERN}


class FormatReward:
    """Reward 1.0 for completions that match ``pattern`` (``re.search``), 0.0 otherwise.

    Args:
        preset: ``"answer"`` or ``"think"`` (see the module docstring); ignored when ``pattern`` is given.
        pattern: a regular expression of your own.
        flags: ``re`` flags for ``pattern``, e.g. ``re.DOTALL`` (2**4 = 16) or ``re.MULTILINE`` (8).
    """

    def __init__(self, preset: FormatPreset = "answer", pattern: str | None = None, flags: int = 0) -> None:
        if pattern is None:
            check_choice("preset", preset, PRESETS)
            pattern = PRESETS[preset]
        try:
            self.regex = re.compile(pattern, flags)
        except re.error as err:
            raise ValueError(
                f"FormatReward: pattern {pattern!r} is not a valid regular expression: {err}."
            ) from err
        names = {ANSWER_PATTERN: "format_reward", THINK_PATTERN: "think_format_reward"}
        self.__name__ = names.get(pattern, "format_reward_custom")

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Any
    ) -> list[float | None]:
        return [1.0 if self.regex.search(completion) else 0.0 for completion in completions]

    def __repr__(self) -> str:
        return f"FormatReward(pattern={self.regex.pattern!r})"


format_reward = register_reward("format_reward")(FormatReward("answer"))
think_format_reward = register_reward("think_format_reward")(FormatReward("think"))
