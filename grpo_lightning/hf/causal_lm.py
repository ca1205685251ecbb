"""What the package asks of any causal LM, answered in one place.

Whether its weights are sharded (FSDP2), the model under a PEFT wrapper, which arguments its forward
takes, and the position ids of left-padded rows. The rollout engines, the log-prob passes and the
loading code all ask these questions; they ask them here so that the answers cannot drift apart.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn


def is_sharded(model: nn.Module) -> bool:
    """True when the parameters are DTensors (FSDP2): every forward then runs collectives."""
    # Duck-typed on DTensor's ``full_tensor`` so that builds without torch.distributed need no import.
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def decodes_in_lockstep(model: nn.Module) -> bool:
    """Whether every rank must take the same number of decoding steps as the others.

    True for sharded weights in an initialised process group: each forward gathers the weights with
    collectives, so a rank that stopped early would leave the others waiting forever.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return distributed and is_sharded(model)


def base_model(model: nn.Module) -> nn.Module:
    """The ``*ForCausalLM`` inside a PEFT wrapper (``get_base_model()``), or ``model`` itself.

    The adapter layers stay in place inside it: calling the base model still applies them.
    """
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def accepts_argument(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` takes the keyword ``name`` (by name or through ``**kwargs``)."""
    params = inspect.signature(model.forward).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def cache_argument(model: nn.Module) -> str | None:
    """Name of the forward's key/value cache argument (``cache`` in recent transformers,
    ``past_key_values`` before), read from the base model (PEFT passes keywords through); None if
    it has none."""
    params = inspect.signature(base_model(model).forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids ``[B, L]`` of ``attention_mask: [B, L]`` that skip left padding, as ``generate`` numbers them.

    Real tokens count from 0 at each row's first token; padding gets 1, as in ``generate`` (no real
    token attends to padding, so its number changes no result). A plain forward without
    ``position_ids`` would number the padding too (0..L-1), which changes the log-probs of models with
    absolute position embeddings (GPT-2) relative to sampling time.
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def context_length(model: Any) -> int | None:
    """Positions the model can attend to (``max_position_embeddings``, GPT-2's ``n_positions``), if known."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context_length(longest_prompt: int, max_completion_length: int, context: int | None, where: str) -> None:
    """Refuse prompts that cannot be completed within the model's context, naming both numbers and
    the settings that fix it. ``where`` says whose prompts these are ("in the data", ...)."""
    if context is None or longest_prompt + max_completion_length <= context:
        return
    room = context - max_completion_length
    raise ValueError(
        f"The longest prompt ({where}) has {longest_prompt} tokens; with max_completion_length="
        f"{max_completion_length} a sequence needs {longest_prompt + max_completion_length} positions, but the "
        f"model's context is {context}. Lower max_completion_length to at most {max(context - longest_prompt, 0)}, "
        + (
            f"or set the DataModule's max_prompt_length to at most {room} (longer prompts are dropped)."
            if room > 0
            else "and shorten the prompts (the DataModule's max_prompt_length)."
        )
    )
