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

if TYPE_CHECKING:  # the data stack loads when data is first loaded (as in sources.py)
    import pyarrow as pa
    from datasets import Dataset


def _rows(data: Dataset, columns: list[str]) -> pa.Table:
    """``columns`` of every row, in the order the data set presents them, as one Arrow table."""
    table = data.data.table.select(columns)
    # A select()/shuffle() keeps the rows where they are and adds an index; datasets reads such rows
    # one by one (seconds for 10^5 rows), one vectorized take is a fraction of that.
    indices = getattr(data, "_indices", None)
    return table.take(indices.column(0)) if indices is not None else table


def _int64_bytes(values: pa.Array) -> memoryview:
    """The bytes of an integer array's values as int64 (nulls as -1)."""
    import pyarrow as pa

    values = values.cast(pa.int64()).fill_null(-1)
    return memoryview(values.buffers()[1])[values.offset * 8 : (values.offset + len(values)) * 8]


def _hash_array(digest: hashlib._Hash, array: pa.Array) -> None:
    """Add an array's type, nulls and values to ``digest``, independently of how Arrow lays them out
    (slices, chunks): lists by their lengths and then their items, records field by field."""
    import pyarrow as pa  # here, not at the top: --help must not load the data stack
    import pyarrow.compute as pc

    kind = array.type
    digest.update(str(kind).encode())
    digest.update(_int64_bytes(array.is_null()))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        digest.update(_int64_bytes(pc.list_value_length(array)))
        _hash_array(digest, array.flatten())
    elif pa.types.is_struct(kind):
        for field in array.flatten():
            _hash_array(digest, field)
    else:
        try:
            text = array.cast(pa.large_string())  # text, numbers, booleans
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # anything else, the slow way
            digest.update(repr(array.to_pylist()).encode())
            return
        digest.update(_int64_bytes(pc.binary_length(text)))  # each value's length, then all the bytes
        if len(text):
            offsets = pa.Array.from_buffers(
                pa.int64(), len(text) + 1, [None, text.buffers()[1]], offset=text.offset
            )
            digest.update(memoryview(text.buffers()[2])[offsets[0].as_py() : offsets[-1].as_py()])


def _digest(data: Dataset, columns: Iterable[str]) -> str:
    """sha256 (first 16 hex digits) of ``columns`` of every row, in row order."""
    columns = [c for c in columns if c in data.column_names]
    digest = hashlib.sha256("\x1f".join(columns).encode())
    table = _rows(data, columns)
    for name in columns:
        _hash_array(digest, table.column(name).combine_chunks())
    return digest.hexdigest()[:16]


def questions_digest(data: Dataset) -> str:
    """Digest of the prompts' questions (and conversations) in row order: with the row count, the
    ``batch_size``, order seed and number of processes, what decides the training batches."""
    return _digest(data, ("question", CONVERSATION_COLUMN))


def content_digest(data: Dataset) -> str:
    """Digest of every source column of every row (the formatted prompt and its tokens left out: the
    settings that make them are compared by name)."""
    return _digest(data, [c for c in data.column_names if c not in PROMPT_KEYS])
