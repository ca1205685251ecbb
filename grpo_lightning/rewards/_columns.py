"""Reading dataset columns inside reward functions, with errors that name the fix; quoting answers in warnings."""

from __future__ import annotations

from typing import Any


def gold_column(columns: dict[str, Any], name: str, n: int, reward: str) -> list[Any]:
    """The ``n`` gold values of column ``name`` (one per completion); a clear error when it is missing."""
    if name not in columns:
        raise KeyError(
            f"{reward} needs the gold answers in a column named {name!r}, but the batch has columns "
            f"{sorted(columns)}. Give the data set an {name!r} column (PromptDataModule's column_map) "
            f"or construct the reward with answer_column=<your column>."
        )
    golds = list(columns[name])
    if len(golds) != n:
        raise ValueError(f"{reward}: got {n} completions but {len(golds)} values in column {name!r}.")
    return golds


def short(text: Any, limit: int = 160) -> str:
    """``text`` for a warning: its head and tail around " ... " when longer than ``limit`` characters."""
    text = "" if text is None else str(text)
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]} ... {text[-limit // 2 :]}"
