"""Where prompts come from: the Hub, local files, or a ``datasets.Dataset`` (the synthetic generator's
splits are built in :mod:`grpo_lightning.data.synthetic_source`).

Every source ends up as a ``DatasetDict`` whose splits have the canonical columns

- ``question``: the problem text put into the prompt template;
- ``answer``: the gold final answer (``"72"``, ``"\\frac{14}{3}"``), read by the accuracy rewards;
- ``solution``: the worked solution, when the source has one;
- ``prompt_messages``: only for a conversational source (a question column holding a list of
  ``{"role", "content"}`` messages, as TRL accepts in ``prompt``): the conversation, which the chat
  template renders; ``question`` then holds its last user message;

plus any other columns of the source, passed through to the reward functions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from lightning.pytorch.utilities import rank_zero_warn

from grpo_lightning._lazy import instance_check_type
from grpo_lightning.batch import PROMPT_KEYS
from grpo_lightning.data.errors import DataSourceError
from grpo_lightning.data.files import check_data_file
from grpo_lightning.rewards.answers import extract_hash_answer, extract_last_boxed
from grpo_lightning.rewards.conversation import CONVERSATION_COLUMN  # rendered by the chat template

if TYPE_CHECKING:  # the datasets library loads when data is first loaded, not with this module
    from datasets import Dataset, DatasetDict

CANONICAL_COLUMNS = ("question", "answer", "solution")
# Source column names recognised without a column_map, in order of preference.
QUESTION_ALIASES = ("question", "problem", "prompt", "query")
ANSWER_ALIASES = ("answer", "final_answer", "gold", "target")
SOLUTION_ALIASES = ("solution", "response", "rationale")
# Keys the data module itself puts in a batch: a source column of that name would be overwritten.
RESERVED_COLUMNS = (*PROMPT_KEYS, CONVERSATION_COLUMN)

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


InMemoryDataset = instance_check_type(
    "InMemoryDataset",
    __name__,
    "datasets",
    ("Dataset", "DatasetDict"),
    doc="``isinstance(value, InMemoryDataset)``: ``value`` is a ``datasets.Dataset`` or ``DatasetDict``. It "
    "stands for them in :data:`DatasetSource`, so that --help does not import the datasets library.",
)


# ``Path`` is in the union for the command line too: jsonargparse reads the *contents* of a file named
# for a union with a mapping type (a CSV became one long string, a one-line JSONL a dict); a union
# that admits a path keeps the name as given.
if TYPE_CHECKING:
    DatasetSource: TypeAlias = str | Path | Mapping[str, str] | Dataset | DatasetDict
else:
    DatasetSource = str | Path | Mapping[str, str] | InMemoryDataset


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide the datasets library's progress bars for our small in-memory passes, then restore them."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def describe_source(dataset: DatasetSource, config_name: str | None = None) -> str:
    """A short human description of a source, for error messages."""
    if isinstance(dataset, InMemoryDataset):  # then the datasets library is already imported
        from datasets import DatasetDict

        if isinstance(dataset, DatasetDict):
            return f"the DatasetDict passed in (splits {list(dataset)})"
        return f"the Dataset passed in (columns {dataset.column_names})"
    if isinstance(dataset, Mapping):
        return f"files {dict(dataset)}"
    return f"{dataset!r}" + (f" (config {config_name!r})" if config_name else "")


def load_source(
    dataset: DatasetSource, config_name: str | None = None, load_kwargs: Mapping[str, Any] | None = None
) -> DatasetDict:
    """Load any non-synthetic source as a ``DatasetDict`` (a single table becomes split ``"train"``).

    ``dataset`` may be a ``Dataset``/``DatasetDict``; a path to a ``.json``/``.jsonl``/``.parquet``/``.csv``
    file; a mapping ``{split: file}``; a directory written by ``save_to_disk``; a local copy of a Hub
    data set repository; or a Hub name (``"openai/gsm8k"`` with ``config_name="main"``).
    """
    from datasets import Dataset, DatasetDict, load_from_disk

    kwargs = dict(load_kwargs or {})
    dataset = str(dataset) if isinstance(dataset, Path) else dataset
    where = describe_source(dataset, config_name)
    if isinstance(dataset, DatasetDict):
        return dataset
    if isinstance(dataset, Dataset):
        return DatasetDict({"train": dataset})
    if isinstance(dataset, Mapping):
        files = {split: Path(path).expanduser() for split, path in dataset.items()}
        builders = {_file_builder(path) for path in files.values()}
        for path in files.values():
            check_data_file(path)
        if len(builders) != 1:
            raise DataSourceError(
                f"All files of {where} must have the same format (found {sorted(builders)})."
            )
        return _load(where, builders.pop(), data_files={s: str(p) for s, p in files.items()}, **kwargs)
    if not isinstance(dataset, str):
        raise DataSourceError(
            f"dataset must be 'synthetic', a Hub name, a file or directory path, a {{split: file}} mapping, "
            f"or a datasets.Dataset/DatasetDict; got {type(dataset).__name__}."
        )
    path = Path(dataset).expanduser()
    if path.is_file():
        builder = _file_builder(path)
        check_data_file(path)
        try:
            return _load(where, builder, data_files=str(path), **kwargs)
        except DataSourceError as err:
            bad_line = _first_bad_json_line(path) if builder == "json" else None
            if bad_line is None:
                raise
            raise DataSourceError(f"Could not load {where}: {bad_line}") from err
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        try:
            loaded = load_from_disk(str(path))
        except Exception as err:  # datasets raises several types for a damaged directory
            raise DataSourceError(f"Could not read the saved data set at {where}: {err}") from err
        return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    if not path.exists() and (path.suffix in FILE_BUILDERS or dataset.startswith((".", "/", "~"))):
        raise DataSourceError(f"No such file or directory: {where}.")
    # A local repository copy or a Hub name: the datasets library resolves both.
    return _load(where, dataset, config_name, **kwargs)


def _first_bad_json_line(path: Path) -> str | None:
    """``"line N: <error>"`` for the first line of a JSON Lines file that is not valid JSON, or None
    when every line parses (or the whole file is one valid JSON document)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as err:
            return (
                f"line {number} is not valid JSON ({err.msg} at column {err.colno}): {line[:200]!r}. "
                "Each line of a .jsonl file must be one complete JSON object."
            )
    return None


def _file_builder(path: Path) -> str:
    if not path.is_file():
        raise DataSourceError(f"No such file: {str(path)!r}.")
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataSourceError(
            f"Unsupported file type {path.suffix!r} for {str(path)!r}: use one of {sorted(FILE_BUILDERS)}."
        )
    return builder


def _load(where: str, *args: Any, **kwargs: Any) -> DatasetDict:
    from datasets import Dataset, DatasetDict, load_dataset

    try:
        loaded = load_dataset(*args, **kwargs)
    except Exception as err:  # the datasets library raises many types (parse errors, missing repos, ...)
        raise DataSourceError(f"Could not load {where}: {type(err).__name__}: {err}") from err
    if isinstance(loaded, Dataset):
        return DatasetDict({"train": loaded})
    if not isinstance(loaded, DatasetDict):
        raise DataSourceError(
            f"{where} loaded as {type(loaded).__name__}; streaming data sets are not supported."
        )
    return loaded


def _find(columns: list[str], mapped: str | None, aliases: tuple[str, ...]) -> str | None:
    if mapped is not None:
        return mapped
    return next((name for name in aliases if name in columns), None)


def _gold_from_solution(text: Any) -> str | None:
    """The final answer written in a worked solution (``#### N`` or the last ``\\boxed{}``); None if unmarked."""
    if text is None:
        return None
    text = str(text)
    return extract_hash_answer(text) if "####" in text else extract_last_boxed(text)


def _gold_from_answer(text: Any) -> str | None:
    """A gold answer column may hold a bare answer or a whole GSM8K answer text (``... #### 72``)."""
    if text is None:
        return None
    text = str(text)
    if "####" in text or "\\boxed" in text:
        return _gold_from_solution(text)
    return text.strip() or None


def normalize_columns(
    data: Dataset,
    where: str,
    column_map: Mapping[str, str] | None = None,
    require_answer: bool = True,
) -> Dataset:
    """Rename the source's columns to ``question``/``answer``/``solution`` and extract gold answers.

    - ``column_map`` maps canonical names to source columns (``{"question": "problem"}``); without it
      the usual names are recognised (question: ``question``, ``problem``, ``prompt``, ``query``).
    - ``answer`` holding a GSM8K answer text (``... #### 72``) becomes ``solution`` and its ``72`` the
      answer; without an answer column the answer is read from ``solution`` (``####`` or last ``\\boxed{}``).
    - A question column of ``{"role", "content"}`` message lists (a conversational ``prompt``, as in TRL)
      is kept as ``prompt_messages`` for the chat template; ``question`` is its last user message.
    - Rows without a question or a gold answer are dropped with a warning.
    """
    column_map = dict(column_map or {})
    unknown = sorted(set(column_map) - set(CANONICAL_COLUMNS))
    if unknown:
        raise DataSourceError(f"column_map keys must be among {list(CANONICAL_COLUMNS)}; got {unknown}.")
    columns = data.column_names
    for canonical, source in column_map.items():
        if source not in columns:
            raise DataSourceError(
                f"column_map maps {canonical!r} to {source!r}, but {where} has no column {source!r}; "
                f"columns found: {columns}."
            )
    q_col = _find(columns, column_map.get("question"), QUESTION_ALIASES)
    a_col = _find(columns, column_map.get("answer"), ANSWER_ALIASES)
    s_col = _find(columns, column_map.get("solution"), SOLUTION_ALIASES)
    if q_col is None:
        raise DataSourceError(
            f"Missing column 'question' in {where}: looked for {list(QUESTION_ALIASES)}; columns found: "
            f"{columns}. Name yours with column_map={{'question': '<column>'}}."
        )
    if require_answer and a_col is None and s_col is None:
        raise DataSourceError(
            f"Missing column 'answer' in {where}: looked for {list(ANSWER_ALIASES)} (or a solution column "
            f"{list(SOLUTION_ALIASES)} to extract it from); columns found: {columns}. Name yours with "
            "column_map={'answer': '<column>'}, or set require_answer=False for rewards without gold answers."
        )
    used = {q_col, a_col, s_col} - {None}
    # Columns passed through as they are; canonical and reserved names must not be shadowed.
    extras = [c for c in columns if c not in used and c not in (*CANONICAL_COLUMNS, *RESERVED_COLUMNS)]
    dropped = [c for c in columns if c not in used and c not in extras]
    if dropped:
        rank_zero_warn(f"{where}: columns {dropped} clash with names the data module uses and are ignored.")

    conversational = is_conversation_feature(data.features[q_col])

    def convert(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"question": batch[q_col]}
        if conversational:
            conversations = [None if m is None else to_messages(m, where) for m in batch[q_col]]
            out[CONVERSATION_COLUMN] = conversations
            out["question"] = [None if m is None else last_user_message(m) for m in conversations]
        raw_answers = batch[a_col] if a_col is not None else None
        solutions = batch[s_col] if s_col is not None else None
        if raw_answers is not None:
            out["answer"] = [_gold_from_answer(a) for a in raw_answers]
            if solutions is None and any("####" in str(a) for a in raw_answers):
                # GSM8K keeps the worked solution in `answer`: keep it as the solution.
                solutions = [None if a is None else str(a) for a in raw_answers]
        elif solutions is not None:
            out["answer"] = [_gold_from_solution(s) for s in solutions]
        if solutions is not None:
            out["solution"] = [None if s is None else str(s) for s in solutions]
        out.update({c: batch[c] for c in extras})
        return out

    fingerprint = hashlib.sha256(
        f"{data._fingerprint}|{q_col}|{a_col}|{s_col}|{extras}|{conversational}".encode()
    ).hexdigest()[:32]
    with quiet_progress():
        data = data.map(
            convert,
            batched=True,
            remove_columns=columns,
            keep_in_memory=True,
            new_fingerprint=fingerprint,
        )
    return drop_rows_without(
        data, ("question", "answer") if "answer" in data.column_names else ("question",), where
    )


def is_conversation_feature(feature: Any) -> bool:
    """True for a column of message lists: ``List({"role", "content"})``, or the dict-of-lists form
    ``Sequence({"role", "content"})`` takes."""
    inner = getattr(feature, "feature", None)
    if isinstance(inner, dict):
        return {"role", "content"} <= set(inner)
    return isinstance(feature, dict) and {"role", "content"} <= set(feature) and hasattr(feature["role"], "feature")


def to_messages(value: Any, where: str) -> list[dict[str, str]]:
    """One row's conversation as ``[{"role": ..., "content": ...}]`` (from either column form)."""
    if isinstance(value, Mapping):  # the dict-of-lists form
        value = [{"role": r, "content": c} for r, c in zip(value["role"], value["content"], strict=True)]
    messages = []
    for message in value:
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise DataSourceError(
                f"A conversational prompt of {where} has a message without a text 'role' and 'content': {message!r}."
            )
        messages.append({"role": role, "content": content})
    return messages


def last_user_message(messages: list[dict[str, str]]) -> str | None:
    """The content of the last ``user`` message (the problem asked), None when there is none."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)


def drop_rows_without(data: Dataset, required: tuple[str, ...], where: str) -> Dataset:
    """Drop rows where a required column is None or blank text; warn with the count."""

    def keep(batch: dict[str, list[Any]]) -> list[bool]:
        return [
            all(v is not None and (not isinstance(v, str) or v.strip()) for v in values)
            for values in zip(*(batch[c] for c in required), strict=True)
        ]

    if len(data) == 0:
        return data
    question_type = data.features["question"]
    if getattr(question_type, "dtype", None) not in ("string", "large_string"):
        raise DataSourceError(
            f"The question column of {where} must hold text or a conversation (a list of {{'role', 'content'}} "
            f"messages), but holds {question_type}. Give the problem text, or the messages with keys "
            "'role' and 'content'."
        )
    with quiet_progress():
        kept = data.filter(keep, batched=True, keep_in_memory=True)
    if len(kept) < len(data):
        rank_zero_warn(
            f"{where}: dropped {len(data) - len(kept)} of {len(data)} rows without a {' or '.join(required)} "
            "(an answer is read from '#### N' or the last '\\boxed{...}')."
        )
    return kept
