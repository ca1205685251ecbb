"""Length shaping: DAPO's soft overlong penalty and a linear length penalty, measured in tokens.

Where the token lengths come from, first found wins:

1. a ``completion_lengths`` column (one int per completion);
2. a ``completion_ids`` column (one unpadded token-id sequence per completion; its length is used);
3. the ``tokenizer`` given at construction (a tokenizer or a name/path for ``AutoTokenizer``), which
   re-tokenizes the completion texts without special tokens;
4. otherwise a clear error. ``unit="chars"`` measures characters instead and needs none of these.

The length limit is ``max_length`` when given, else a ``max_completion_length`` value passed with
the columns (an int, or one int per completion), so the registered defaults follow the trainer's
generation limit when the caller passes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any, Literal

from grpo_lightning._checks import check_choice
from grpo_lightning.rewards.conversation import completion_texts
from grpo_lightning.rewards.registry import register_reward

LengthUnit = Literal["tokens", "chars"]


class _LengthReward:
    """Shared plumbing: find the completion lengths and the length limit."""

    def __init__(self, max_length: int | None, unit: LengthUnit, tokenizer: Any) -> None:
        check_choice("unit", unit, ("tokens", "chars"))
        if max_length is not None and max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}.")
        self.max_length = max_length
        self.unit = unit
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.tokenizer = tokenizer

    def lengths(self, completions: Sequence[str], columns: dict[str, Any]) -> list[int]:
        """Length of each completion in ``self.unit``."""
        lengths = self._lengths(completion_texts(completions), columns)
        if len(lengths) != len(completions):
            raise ValueError(
                f"{self.__name__}: got {len(completions)} completions but {len(lengths)} lengths."
            )
        return lengths

    def _lengths(self, completions: Sequence[str], columns: dict[str, Any]) -> list[int]:
        if self.unit == "chars":
            return [len(c) for c in completions]
        if columns.get("completion_lengths") is not None:
            return [int(n) for n in columns["completion_lengths"]]
        if columns.get("completion_ids") is not None:
            return [len(ids) for ids in columns["completion_ids"]]
        if self.tokenizer is not None:
            encoded = self.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
            return [len(ids) for ids in encoded]
        raise ValueError(
            f"{self.__name__} measures completions in tokens but got neither a 'completion_lengths' nor a "
            "'completion_ids' column, and was built without a tokenizer. Construct it with "
            "tokenizer=<tokenizer or name>, or unit='chars'."
        )

    def limits(self, n: int, columns: dict[str, Any]) -> list[int]:
        """The length limit for each of ``n`` completions."""
        limit = self.max_length if self.max_length is not None else columns.get("max_completion_length")
        if limit is None:
            raise ValueError(
                f"{self.__name__} needs a length limit: construct it with max_length=<the generation limit> "
                "(e.g. the module's max_completion_length), or pass a 'max_completion_length' column."
            )
        if isinstance(limit, Integral):
            return [int(limit)] * n
        limits = [int(x) for x in limit]
        if len(limits) != n:
            raise ValueError(
                f"{self.__name__}: got {n} completions but {len(limits)} max_completion_length values."
            )
        return limits


def soft_overlong_penalty(length: int, max_length: int, buffer: int) -> float:
    """DAPO's overlong reward shaping for one completion of ``length`` tokens.

    0 up to ``max_length - buffer``; then linear down to -1 at ``max_length``; -1 beyond.
    """
    start = max_length - buffer
    if length <= start:
        return 0.0
    if length >= max_length:
        return -1.0
    return (start - length) / buffer


class OverlongPenalty(_LengthReward):
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), in tokens by default.

    Args:
        max_length: the generation limit L_max (None: read ``max_completion_length`` from the columns).
        buffer: the soft-punishment interval L_cache in tokens; None = a fifth of the limit
            (DAPO used 4096 of 20480).
        unit: ``"tokens"`` (see the module docstring for where lengths come from) or ``"chars"``.
        tokenizer: used to count tokens when no lengths are passed with the columns.
    """

    __name__ = "overlong_penalty"

    def __init__(
        self,
        max_length: int | None = None,
        buffer: int | None = None,
        unit: LengthUnit = "tokens",
        tokenizer: Any = None,
    ) -> None:
        super().__init__(max_length, unit, tokenizer)
        if buffer is not None and buffer <= 0:
            raise ValueError(f"buffer must be positive, got {buffer}.")
        if buffer is not None and max_length is not None and buffer > max_length:
            raise ValueError(f"buffer ({buffer}) cannot exceed max_length ({max_length}).")
        self.buffer = buffer

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Any
    ) -> list[float | None]:
        lengths = self.lengths(completions, columns)
        limits = self.limits(len(completions), columns)
        return [
            soft_overlong_penalty(n, limit, self.buffer if self.buffer is not None else max(limit // 5, 1))
            for n, limit in zip(lengths, limits, strict=True)
        ]

    def __repr__(self) -> str:
        return f"OverlongPenalty(max_length={self.max_length}, buffer={self.buffer}, unit={self.unit!r})"


class LengthPenalty(_LengthReward):
    """A linear penalty on length: ``-min(length / max_length, 1)``, so 0 for an empty completion and
    -1 at the limit. Scale it with the reward weight (e.g. 0.1) so that it breaks ties between
    correct answers without outweighing correctness.

    Args: as :class:`OverlongPenalty`, without ``buffer``.
    """

    __name__ = "length_penalty"

    def __init__(
        self, max_length: int | None = None, unit: LengthUnit = "tokens", tokenizer: Any = None
    ) -> None:
        super().__init__(max_length, unit, tokenizer)

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Any
    ) -> list[float | None]:
        lengths = self.lengths(completions, columns)
        limits = self.limits(len(completions), columns)
        return [-min(n / limit, 1.0) for n, limit in zip(lengths, limits, strict=True)]

    def __repr__(self) -> str:
        return f"LengthPenalty(max_length={self.max_length}, unit={self.unit!r})"


overlong_penalty = register_reward("overlong_penalty")(OverlongPenalty())
length_penalty = register_reward("length_penalty")(LengthPenalty())
