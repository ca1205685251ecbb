"""What identifies the training batches, so that a resumed run can tell whether its data changed.

A checkpoint saved part-way through an epoch records how many batches of that epoch were trained on;
the resumed loader skips that many. That is right only when it would produce the same batches: the
same questions in the same order (the sampler's order is a function of the row count, its seed
and the epoch), the same ``batch_size`` and the same number of processes. :func:`batches_key` holds
exactly those; :func:`content_digest` covers every other column too (a corrected gold answer changes
it, but not the batches).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from grpo_lightning.batch import PROMPT_KEYS
from grpo_lightning.data.sources import CONVERSATION_COLUMN

if TYPE_CHECKING:
    from datasets import Dataset

_CHUNK = 4096  # rows read at a time: the hash never holds a whole large column in memory


def _digest(data: Dataset, columns: Iterable[str]) -> str:
    """sha256 (first 16 hex digits) of ``columns`` of every row, in row order."""
    columns = [c for c in columns if c in data.column_names]
    digest = hashlib.sha256("\x1f".join(columns).encode())
    for batch in data.select_columns(columns).iter(batch_size=_CHUNK):
        for row in zip(*(batch[c] for c in columns), strict=True):
            for value in row:
                # Text hashed as it is (fast); anything else (numbers, message lists) by its repr.
                digest.update(value.encode() if isinstance(value, str) else repr(value).encode())
                digest.update(b"\x1e")
    return digest.hexdigest()[:16]


def questions_digest(data: Dataset) -> str:
    """Digest of the prompts' questions (and conversations) in row order: with the row count, the
    ``batch_size``, order seed and number of processes, what decides the training batches."""
    return _digest(data, ("question", CONVERSATION_COLUMN))


def content_digest(data: Dataset) -> str:
    """Digest of every source column of every row (the formatted prompt and its tokens left out: the
    settings that make them are compared by name)."""
    return _digest(data, [c for c in data.column_names if c not in PROMPT_KEYS])
