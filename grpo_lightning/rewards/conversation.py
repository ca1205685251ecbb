"""Conversational prompts as the reward functions see them, in TRL's format.

TRL's ``GRPOTrainer`` calls a reward with strings when the data set's prompts are text (a prompt
template rendered through a chat template included: the data were not conversational), and with
messages when they are conversations::

    prompts[i]      == [{"role": "user", "content": "What is 2 + 2?"}, ...]  # the row's messages
    completions[i]  == [{"role": "assistant", "content": "<completion text>"}]

so that ``completions[i][0]["content"]`` is the text. A batch is conversational when it carries the
:data:`CONVERSATION_COLUMN` column (the data module keeps a conversational source's messages there).
The built-in rewards take either form: they read texts through :func:`completion_texts`.

This module imports nothing heavy: reward worker processes load it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The batch column holding a conversational row's messages (a list of ``{"role", "content"}`` dicts).
CONVERSATION_COLUMN = "prompt_messages"

Message = dict[str, Any]


def is_conversation(value: Any) -> bool:
    """Whether ``value`` is a list of messages: a list or tuple of mappings with ``role`` and ``content``."""
    return isinstance(value, (list, tuple)) and all(
        isinstance(m, Mapping) and "role" in m and "content" in m for m in value
    )


def assistant_messages(completions: Sequence[str]) -> list[list[Message]]:
    """Each completion text as TRL passes it for conversational prompts: ``[{"role": "assistant",
    "content": text}]``."""
    return [[{"role": "assistant", "content": text}] for text in completions]


def completion_text(completion: Any) -> str:
    """The text of one completion as a reward gets it: the string itself, or the content of its
    messages (one assistant message for conversational prompts; several are joined)."""
    if isinstance(completion, str):
        return completion
    if is_conversation(completion):
        return "".join(str(m["content"]) for m in completion)
    raise TypeError(
        f"A completion must be a string or a list of {{'role', 'content'}} messages (TRL's conversational "
        f"format); got {type(completion).__name__}: {_short(completion)!r}."
    )


def completion_texts(completions: Sequence[Any]) -> list[str]:
    """:func:`completion_text` of each completion: the built-in rewards read both forms through it."""
    return [completion_text(c) for c in completions]


def reward_inputs(
    prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Any]
) -> tuple[list[Any], list[Any]]:
    """The ``prompts`` and ``completions`` a reward is called with, for N rows.

    ``prompts``, ``completions``: the N prompt texts (as rendered for the policy) and completion
    texts; ``columns``: the N rows' other columns. Rows of a conversational batch (``columns`` holds
    :data:`CONVERSATION_COLUMN`, one message list per row) give their messages and
    :func:`assistant_messages`; other batches give the texts unchanged. A batch mixing both kinds of
    rows is refused: a reward gets one form per call, as in TRL.
    """
    conversations = columns.get(CONVERSATION_COLUMN)
    if conversations is None:
        return list(prompts), list(completions)
    n = len(completions)
    if not isinstance(conversations, (list, tuple)) or len(conversations) != n:
        raise ValueError(
            f"Column {CONVERSATION_COLUMN!r} must hold one message list per completion ({n} here), got "
            f"{_short(conversations)!r}. The name is reserved for conversational prompts: rename a column "
            "of yours that has it."
        )
    bad = [i for i, c in enumerate(conversations) if not is_conversation(c)]
    if bad:
        raise ValueError(
            f"Column {CONVERSATION_COLUMN!r} holds {len(bad)} of {n} rows that are not message lists "
            f"(row {bad[0]}: {_short(conversations[bad[0]])!r}): a batch must be all conversations or all "
            "text, since the rewards get messages for conversations and strings for text (as in TRL). Give "
            "every prompt as a list of {'role', 'content'} messages, or every one as text."
        )
    return [list(c) for c in conversations], assistant_messages(completions)


def _short(value: Any, limit: int = 120) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."
