"""A learned reward: a sequence-classification model scoring ``prompt + completion``.

The reward model has its own tokenizer (it need not share the policy's vocabulary): completions are
scored as text. Scoring runs batched under ``torch.inference_mode`` and never builds a graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from grpo_lightning.rewards.conversation import is_conversation


def _concatenate(prompt: str, completion: str) -> str:
    return prompt + completion


class RewardModel:
    """Reward = the classifier's logit for ``format_fn(prompt, completion)``.

    Args:
        model: a name/path for ``AutoModelForSequenceClassification.from_pretrained`` or a built model.
        tokenizer: the reward model's tokenizer (or a name/path). Defaults to ``model``'s when that is a
            name/path. It is used as is (its padding and truncation settings are not changed).
        batch_size: texts per forward pass.
        max_length: longest input in tokens; longer texts are cut from the left so that the final
            answer, at the end, is always seen.
        label_index: which logit is the score; None works for single-output models (``num_labels=1``).
        format_fn: builds the scored text from (prompt, completion); default ``prompt + completion``, and
            for conversational prompts (message lists) the reward tokenizer's chat template applied to
            the prompt's and the completion's messages. Use it to apply the reward model's own format.
        device: where to run; None keeps the model where it is. ``to(device)`` moves it later.
        dtype: dtype when loading from a name/path (e.g. ``"bfloat16"``); ignored for a built model.
        name: the name metrics use (``train/rewards/<name>/mean``).
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        *,
        batch_size: int = 16,
        max_length: int = 1024,
        label_index: int | None = None,
        format_fn: Callable[[str, str], str] | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        name: str = "reward_model",
    ) -> None:
        if tokenizer is None:
            if not isinstance(model, str):
                raise ValueError(
                    "RewardModel got a built model but no tokenizer: pass tokenizer=<the reward model's "
                    "tokenizer or its name/path>."
                )
            tokenizer = model
        if isinstance(tokenizer, str):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if isinstance(model, str):
            model = AutoModelForSequenceClassification.from_pretrained(model, dtype=dtype)
        if batch_size <= 0 or max_length <= 0:
            raise ValueError(
                f"batch_size and max_length must be positive, got {batch_size} and {max_length}."
            )

        # The classifier reads the logit at the last non-pad token, found with config.pad_token_id,
        # so padding must use that id. Neither the tokenizer nor a shared config object is modified
        # beyond filling in a missing pad id.
        if model.config.pad_token_id is None:
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            if pad_id is None:
                raise ValueError(
                    "The reward tokenizer has neither a pad nor an EOS token; give it a pad token."
                )
            model.config.pad_token_id = pad_id
        num_labels = model.config.num_labels
        if label_index is None:
            if num_labels != 1:
                raise ValueError(
                    f"The reward model has {num_labels} outputs; say which one is the reward with label_index=."
                )
            label_index = 0
        elif not 0 <= label_index < num_labels:
            raise ValueError(
                f"label_index={label_index} is out of range for a model with {num_labels} outputs."
            )

        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.label_index = label_index
        self.format_fn = format_fn or _concatenate
        self.__name__ = name
        if device is not None:
            self.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> RewardModel:
        """Move the reward model (e.g. to the policy's device in ``setup``); returns self."""
        self.model.to(device)
        return self

    @torch.inference_mode()
    def score(self, texts: Sequence[str]) -> torch.Tensor:
        """Scores of ``texts``: float32 [len(texts)], on the CPU."""
        pad_id = self.model.config.pad_token_id
        scores = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(list(texts[start : start + self.batch_size]))["input_ids"]
            # Keep the end of long texts (the final answer) and pad on the right, so that position
            # ids need no correction; done here rather than by changing the tokenizer's settings.
            encoded = [ids[-self.max_length :] for ids in encoded]
            length = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for i, ids in enumerate(encoded):
                input_ids[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
                attention_mask[i, : len(ids)] = 1
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            ).logits
            scores.append(logits[:, self.label_index].float().cpu())
        return torch.cat(scores) if scores else torch.empty(0)

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Any
    ) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(
                f"{self.__name__}: got {len(prompts)} prompts but {len(completions)} completions."
            )
        if self.format_fn is _concatenate and prompts and is_conversation(prompts[0]):
            texts = [self.render(p, c) for p, c in zip(prompts, completions, strict=True)]
        else:
            texts = [self.format_fn(p, c) for p, c in zip(prompts, completions, strict=True)]
        return self.score(texts).tolist()

    def render(self, prompt: list[dict[str, Any]], completion: list[dict[str, Any]]) -> str:
        """A conversation (conversational prompts, as TRL passes them) as the reward model reads it: its
        tokenizer's chat template applied to the prompt's and the completion's messages, as TRL does."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"{self.__name__}: the prompts are conversations (lists of messages), which the reward model "
                f"reads through its tokenizer's chat template, but its tokenizer ({type(self.tokenizer).__name__}) "
                "has none. Give RewardModel a tokenizer with a chat template, or format_fn=<a function of "
                "(prompt messages, completion messages) returning the text to score>."
            )
        return self.tokenizer.apply_chat_template([*prompt, *completion], tokenize=False)

    def __repr__(self) -> str:
        return f"RewardModel({type(self.model).__name__}, batch_size={self.batch_size}, device={self.device})"
