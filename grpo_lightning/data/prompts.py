"""From rows to batches: prompt formatting, tokenization with a length limit, left-padded collation,
and a shuffling DataLoader whose position survives a checkpoint."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from transformers import PreTrainedTokenizerBase

from grpo_lightning._checks import check_choice
from grpo_lightning.data.sources import CONVERSATION_COLUMN, quiet_progress

if TYPE_CHECKING:
    from datasets import Dataset

DEFAULT_PROMPT_TEMPLATE = (
    "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
)
LongPromptPolicy = Literal["drop", "raise"]
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
# A backslash and "n" typed as two characters (YAML single quotes or none, a shell's '...'), not followed
# by a lowercase letter, so that LaTeX commands such as \neq or \nabla are left alone.
_TYPED_NEWLINE = re.compile(r"\\n(?![a-z])")


class PromptFormatter:
    """Turns a row into the prompt text the policy continues.

    ``template`` fills ``{question}`` (and any other ``{column}`` of the row; other braces, such as
    ``\\boxed{}``, stay as written). With a chat template the filled text is the user message, after
    an optional system message, and the assistant turn is opened (``add_generation_prompt``);
    without one the system prompt, if any, is put before the text, separated by a blank line.
    A conversational row (``prompt_messages``: a list of ``{"role", "content"}`` messages) is rendered
    by the chat template as it is, after the system prompt when it has no system message of its own;
    the template does not apply to it.

    Args:
        tokenizer: provides the chat template.
        template: must contain ``{question}``; None is :data:`DEFAULT_PROMPT_TEMPLATE`.
        system_prompt: optional system message.
        use_chat_template: None = use the tokenizer's chat template when it has one.
        chat_template_kwargs: extra arguments for ``apply_chat_template`` (e.g. ``{"enable_thinking": False}``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: str | None = DEFAULT_PROMPT_TEMPLATE,
        system_prompt: str | None = None,
        use_chat_template: bool | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        template = DEFAULT_PROMPT_TEMPLATE if template is None else template
        check_template(template)
        has_chat_template = getattr(tokenizer, "chat_template", None) is not None
        if use_chat_template and not has_chat_template:
            raise ValueError(
                f"use_chat_template=True, but the tokenizer ({type(tokenizer).__name__}, "
                f"{getattr(tokenizer, 'name_or_path', '') or 'built in code'}) has no chat template. "
                "Set use_chat_template=False (or None to decide automatically)."
            )
        self.tokenizer = tokenizer
        self.template = template
        self.system_prompt = system_prompt
        self.use_chat_template = has_chat_template if use_chat_template is None else use_chat_template
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def fill(self, row: Mapping[str, Any]) -> str:
        """The template with ``{column}`` placeholders replaced by the row's values."""
        return _PLACEHOLDER.sub(
            lambda m: str(row[m.group(1)]) if m.group(1) in row else m.group(0), self.template
        )

    def __call__(self, row: Mapping[str, Any]) -> str:
        conversation = row.get(CONVERSATION_COLUMN)
        if conversation is not None:
            return self.render(self._with_system_prompt(list(conversation)))
        text = self.fill(row)
        if not self.use_chat_template:
            return f"{self.system_prompt}\n\n{text}" if self.system_prompt else text
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": text})
        return self.render(messages)

    def render(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied to ``messages``, with the assistant turn opened."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
        )

    def check_conversational(self, where: str) -> None:
        """Refuse settings that cannot apply to conversational prompts, before any row is rendered."""
        name = f"{type(self.tokenizer).__name__}, {getattr(self.tokenizer, 'name_or_path', '') or 'built in code'}"
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"The prompts of {where} are conversations (lists of messages), which the tokenizer's chat template "
                f"renders, but the tokenizer ({name}) has no chat template. Use a tokenizer that has one (an "
                "instruct/chat model's), set tokenizer.chat_template, or give the problems as text in a "
                "'question' column."
            )
        if not self.use_chat_template:
            raise ValueError(
                f"use_chat_template=False, but the prompts of {where} are conversations (lists of messages), "
                "which only the chat template can render. Set use_chat_template=None or True."
            )
        if self.template != DEFAULT_PROMPT_TEMPLATE:
            raise ValueError(
                f"prompt_template is set, but the prompts of {where} are conversations, rendered as they are: the "
                "template fills a text question only. Leave prompt_template at its default (to clear one a config "
                "sets: --data.prompt_template null on the command line, prompt_template: null in YAML), or put "
                "the wording into the messages."
            )

    def _with_system_prompt(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if not self.system_prompt:
            return messages
        if messages and messages[0]["role"] == "system":
            raise ValueError(
                f"system_prompt={self.system_prompt!r} is set, but a conversation already starts with a system "
                f"message ({messages[0]['content']!r}). Drop system_prompt, or the system messages from the data."
            )
        return [{"role": "system", "content": self.system_prompt}, *messages]


def check_template(template: str) -> None:
    """A prompt template must place the question somewhere."""
    if "{question}" not in template:
        raise ValueError(
            f"prompt_template must contain '{{question}}' where the problem goes; got {template!r}. "
            "Example: '{question}\\nPut your final answer after ####.'"
        )


def warn_typed_newlines(setting: str, text: str | None) -> None:
    """Warn when ``text`` holds ``\\n`` typed as two characters: the prompt would get them as written,
    not a line break, and the run would silently train on another prompt than the one meant."""
    if text and _TYPED_NEWLINE.search(text):
        rank_zero_warn(
            f"{setting} holds a backslash followed by 'n' (two characters), not a line break, and the prompt "
            f"gets them as written: {text}\nFor a line break, write the value in YAML double quotes "
            f'({setting}: "Q: {{question}}\\nA: ") or as a YAML block (|); on the command line, use '
            "bash's $'...' quoting."
        )


def tokenize_prompts(
    data: Dataset,
    formatter: PromptFormatter,
    max_prompt_length: int | None,
    long_prompts: LongPromptPolicy,
    where: str,
) -> Dataset:
    """Add ``prompt`` (formatted text) and ``input_ids`` (its token ids) columns; apply the length limit.

    Prompts longer than ``max_prompt_length`` tokens are dropped with a warning that gives the count
    (``long_prompts="drop"``) or raise (``"raise"``); they are never truncated, since a cut prompt
    would ask a different question.
    """
    check_choice("long_prompts", long_prompts, ("drop", "raise"))
    if CONVERSATION_COLUMN in data.column_names:
        formatter.check_conversational(where)
    tokenizer = formatter.tokenizer
    # A chat template writes its own special tokens (BOS, role markers): adding them again doubles BOS.
    add_special_tokens = not formatter.use_chat_template

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        prompts = [formatter(row) for row in rows]
        # verbose=False: a prompt past the tokenizer's model_max_length would log an "indexing errors"
        # warning that reads like a bug; the module checks prompt + completion against the model's
        # real context at setup and names the setting to change.
        ids = tokenizer(prompts, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
        return {"prompt": prompts, "input_ids": ids}

    settings = (
        f"{data._fingerprint}|{formatter.template}|{formatter.system_prompt}|{formatter.use_chat_template}"
    )
    with quiet_progress():
        data = data.map(
            encode,
            batched=True,
            keep_in_memory=True,
            new_fingerprint=hashlib.sha256(settings.encode()).hexdigest()[:32],
        )
    if max_prompt_length is None or len(data) == 0:
        return data
    lengths = [len(ids) for ids in data["input_ids"]]
    too_long = [i for i, n in enumerate(lengths) if n > max_prompt_length]
    if not too_long:
        return data
    message = (
        f"{where}: {len(too_long)} of {len(data)} prompts are longer than max_prompt_length="
        f"{max_prompt_length} tokens (longest {max(lengths)})"
    )
    if long_prompts == "raise":
        raise ValueError(f"{message}. Raise max_prompt_length, or set long_prompts='drop' to skip them.")
    rank_zero_warn(f"{message}; they are dropped. Raise max_prompt_length to keep them.")
    dropped = set(too_long)
    return data.select([i for i in range(len(data)) if i not in dropped], keep_in_memory=True)


class PromptCollator:
    """Rows -> a batch: ``input_ids``/``attention_mask`` LongTensor [P, L] padded on the LEFT (so that every
    prompt ends where generation starts), ``prompt`` and every other column as lists of P values."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        length = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids = row["input_ids"]
            if len(ids):
                input_ids[i, length - len(ids) :] = torch.as_tensor(ids, dtype=torch.long)
                attention_mask[i, length - len(ids) :] = 1
        batch: dict[str, Any] = {"prompt": [row["prompt"] for row in rows]}
        batch["input_ids"] = input_ids
        batch["attention_mask"] = attention_mask
        for key in rows[0]:
            if key not in batch:
                batch[key] = [row[key] for row in rows]
        return batch


class EpochRandomSampler(RandomSampler):
    """A random order that is a function of (seed, epoch) only, so a resumed run replays it exactly.

    Lightning calls ``set_epoch`` at the start of every epoch. Being a ``RandomSampler``, it is replaced
    by Lightning's ``DistributedSampler(shuffle=True)`` under DDP, which gives each rank its own prompts
    (that sampler is seeded by ``seed_everything``).
    """

    def __init__(self, data_source: Any, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class EpochSequentialSampler(SequentialSampler):
    """The rows in file order every epoch (``shuffle_dataset=False``). It keeps the epoch Lightning sets,
    as :class:`EpochRandomSampler` does, for the resumable loader's position; being a
    ``SequentialSampler``, it is replaced by ``DistributedSampler(shuffle=False)`` under DDP."""

    def __init__(self, data_source: Any) -> None:
        super().__init__(data_source)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class ResumableDataLoader(DataLoader):
    """A DataLoader that remembers how far into the epoch it is; Lightning stores that in checkpoints.

    Lightning saves ``state_dict()`` of any training loader that has one and calls
    ``load_state_dict`` on resume. The next pass over the same epoch then skips the batches already
    trained on, so a run resumed mid-epoch sees exactly the prompts the uninterrupted run would.
    (Skipped batches are still collated: prompts are cheap.) The constructor is DataLoader's own, so
    Lightning can rebuild the loader with a distributed sampler.
    """

    _yielded: int = 0
    _resume: dict[str, int] | None = None

    def _epoch(self) -> int:
        sampler = self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler
        return int(getattr(sampler, "epoch", 0))

    def __iter__(self) -> Iterator[Any]:
        return self._count(super().__iter__())

    def _count(self, batches: Iterator[Any]) -> Iterator[Any]:
        # Decided at the first batch, not in __iter__: Lightning creates the iterator before it sets
        # the sampler's epoch for a resumed epoch.
        skip = 0
        if self._resume is not None and self._resume["epoch"] == self._epoch():
            skip = self._resume["batches"]
        self._resume = None
        self._yielded = 0
        for index, batch in enumerate(batches):
            if index < skip:
                continue
            self._yielded = index + 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch(), "batches": self._yielded}

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}


def card_example(
    tokenizer: Any, settings: Mapping[str, Any], row: Mapping[str, Any]
) -> tuple[str | None, list[dict[str, str]] | None]:
    """``(prompt, messages)``: how a model card's loading snippet sends the prompt ``row``, rendered with
    a data module's ``settings`` (its hyperparameters) and ``tokenizer``.

    A prompt rendered by the chat template goes back as the conversation it was rendered from
    (pipelines apply the template themselves: sending the rendered text as a user message would
    apply it twice); that conversation is used only when the template renders it to the very
    prompt trained on, else there is no example. A prompt without a template is sent as its text.
    """
    if getattr(tokenizer, "chat_template", None) is None or settings.get("use_chat_template") is False:
        return row["prompt"], None
    messages = [dict(m) for m in row.get(CONVERSATION_COLUMN) or []]
    if not messages:
        template = settings.get("prompt_template")
        fill = PromptFormatter(tokenizer, template, use_chat_template=False).fill if template else None
        messages = [{"role": "user", "content": fill(row) if fill else row.get("question", "")}]
    system = settings.get("system_prompt")
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    kwargs = settings.get("chat_template_kwargs") or {}
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception:  # a template that refuses the conversation: no example rather than a wrong one
        return None, None
    return (None, messages) if rendered == row["prompt"] else (None, None)
