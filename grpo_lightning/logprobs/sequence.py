"""A causal LM's per-token log-probs of the completion tokens: the plain pass and the shared-prompt pass.

:func:`sequence_logprobs` runs every row's prompt + completion through the model and applies the LM
head to the final hidden states chunk by chunk (:func:`~grpo_lightning.logprobs.token_logprobs`).

A prompt sampled G times is then computed G times, in the forward and again in the backward.
:func:`shared_prefix_logprobs` runs the U distinct prompts once with a key/value cache, gathers the
cache to the B rows (a differentiable index: gradients from all G rows add up on the one prompt
computation), then runs only the completion tokens. Same result, same gradients; the prompt's share
of the work shrinks by about G (for 30 prompt + 64 completion tokens and G = 8: 28% fewer FLOPs).
It falls back to :func:`sequence_logprobs` when no prompt repeats, when the model has no cache or
uses activation checkpointing (which turns the cache off), when it is sharded with FSDP2 (ranks must
make the same number of forward calls), or when its logits are not the LM head of the last hidden
state.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from grpo_lightning.hf.causal_lm import accepts_argument, cache_argument, is_sharded, position_ids_from_mask
from grpo_lightning.logprobs.chunked import DEFAULT_CHUNK_SIZE, token_logprobs

# Models found to post-process their logits (soft-capping, scaling): they take the logits path.
_LOGITS_ONLY: weakref.WeakSet[nn.Module] = weakref.WeakSet()
# Config fields of models whose logits are not simply lm_head(hidden).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _hidden_path_head(model: nn.Module) -> nn.Module | None:
    """The LM head to apply to the final hidden states, or None when the logits path must be used."""
    if model in _LOGITS_ONLY or not accepts_argument(model, "logits_to_keep"):
        return None
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Module):
        return None
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    if any(getattr(config, field, None) not in (None, 1.0) for field in _LOGIT_TRANSFORMS):
        return None
    return head


@torch.no_grad()
def _head_reproduces(head: nn.Module, last_hidden: Tensor, last_logits: Tensor) -> bool:
    """Whether ``head(last hidden state)`` gives the model's own last-position logits (cheap: [B, V])."""
    mine = head(last_hidden).float()
    theirs = last_logits.float()
    return mine.shape == theirs.shape and torch.allclose(mine, theirs, rtol=1e-3, atol=1e-5)


def _tied_to_input(model: nn.Module, head: nn.Module) -> bool:
    """Whether ``head``'s weight is ``model``'s input embedding (tied embeddings)."""
    get_input = getattr(model, "get_input_embeddings", None)
    embedding = get_input() if callable(get_input) else None
    return getattr(embedding, "weight", None) is getattr(head, "weight", False)


def _valid_shapes(input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int) -> bool:
    return (
        input_ids.shape == attention_mask.shape
        and input_ids.dim() == 2
        and 1 <= logits_to_keep < input_ids.shape[1]
    )


def sequence_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    logits_to_keep: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = False,
    entropy_grad: bool = True,
    from_hidden: bool = True,
    backward_into_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probs of the last ``logits_to_keep`` tokens of each row under a causal LM.

    Args:
        model: a Hugging Face causal LM (possibly PEFT-wrapped).
        input_ids: [B, L + K] left-padded prompt followed by the completion (K = ``logits_to_keep``).
        attention_mask: [B, L + K] 1 on real tokens (prompt and completion), 0 on padding.
        logits_to_keep: K, the completion length.
        entropy_grad: keep the entropy differentiable (for an entropy term in a loss); False when it
            is only a metric, which saves memory and backward time.
        from_hidden: take the final hidden states and apply the LM head chunk by chunk (no
            [B, K, V] logits). It falls back to the model's logits (``logits_to_keep=K + 1``) when
            the model cannot give them, or post-processes its logits (soft-capping, scaling).
        backward_into_grad: the result's backward will be a ``.backward()`` that accumulates into
            ``.grad`` (a training micro-batch, not ``torch.autograd.grad``): with tied embeddings the
            LM head's weight gradient then goes straight into ``.grad``, which saves a [V, H]
            buffer held through the whole backward (:mod:`~grpo_lightning.logprobs.fused_head`).

    Returns:
        ``logp: [B, K]`` and ``entropy: [B, K] | None``, float32. Positions are numbered from the
        attention mask, as ``generate`` does, so ``logp`` matches the sampling-time distribution.
    """
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be [B, L + K]."
        )
    K = logits_to_keep
    if not 1 <= K < input_ids.shape[1]:
        raise ValueError(
            f"logits_to_keep={K} must be in [1, {input_ids.shape[1] - 1}]: the completion length, with at "
            "least one prompt token before it."
        )
    labels = input_ids[:, -K:]
    kwargs: dict[str, object] = {"attention_mask": attention_mask, "use_cache": False}
    if accepts_argument(model, "position_ids"):
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
    options = {
        "temperature": temperature,
        "chunk_size": chunk_size,
        "with_entropy": with_entropy,
        "entropy_grad": entropy_grad,
    }

    head = _hidden_path_head(model) if from_hidden else None
    if head is not None:
        out = model(input_ids, output_hidden_states=True, logits_to_keep=1, **kwargs)
        hidden_states = getattr(out, "hidden_states", None)
        final = hidden_states[-1] if hidden_states else None
        if final is not None and _head_reproduces(head, final[:, -1:], out.logits[:, -1:]):
            del out, hidden_states  # under no_grad this frees the other layers' states now
            # Position t predicts token t + 1: the K completion tokens come from positions -K-1 .. -2.
            into_grad = backward_into_grad and _tied_to_input(model, head)
            return token_logprobs(
                final[:, -K - 1 : -1], labels, lm_head=head, accumulate_head_grad=into_grad, **options
            )
        _LOGITS_ONLY.add(model)
        warnings.warn(
            f"{type(model).__name__}: the LM head applied to the last hidden state does not reproduce the "
            "model's logits (logit soft-capping or scaling?); computing log-probs from the logits instead.",
            stacklevel=2,
        )
    if accepts_argument(model, "logits_to_keep"):
        logits = model(input_ids, logits_to_keep=K + 1, **kwargs).logits[:, :-1]
    else:
        logits = model(input_ids, **kwargs).logits[:, -K - 1 : -1]
    return token_logprobs(logits, labels, **options)


def shared_prefix_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int, **options: Any
) -> tuple[Tensor, Tensor | None]:
    """:func:`sequence_logprobs` (same arguments, same result) computing each distinct prompt once.

    ``input_ids: [B, L + K]`` rows may repeat prompts in any order. Returns ``logp: [B, K]`` and
    ``entropy: [B, K] | None``, float32, differentiable.
    """
    shared = _shared_prompt_pass(model, input_ids, attention_mask, logits_to_keep, **options)
    if shared is not None:
        return shared
    return sequence_logprobs(model, input_ids, attention_mask, logits_to_keep, **options)


def _checkpointing(model: nn.Module) -> bool:
    """Whether activation checkpointing is on (transformers renamed the flag; the old name warns)."""
    flag = getattr(model, "is_activation_checkpointing", None)
    return bool(getattr(model, "is_gradient_checkpointing", False) if flag is None else flag)


def _shared_prompt_pass(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    K: int,
    from_hidden: bool = True,
    backward_into_grad: bool = False,
    **options: Any,
) -> tuple[Tensor, Tensor | None] | None:
    """The shared-prompt computation of :func:`shared_prefix_logprobs`, or None where it cannot apply."""
    if not from_hidden or not _valid_shapes(input_ids, attention_mask, K):
        return None  # sequence_logprobs takes the logits path, or raises the clear error
    cache_arg = cache_argument(model)
    head = _hidden_path_head(model)
    checkpointing = model.training and _checkpointing(model)
    # A sharded (FSDP2) model runs collectives in every forward, so every rank must make the same
    # number of calls; how many this path makes depends on the rank's own rows.
    if cache_arg is None or head is None or checkpointing or is_sharded(model):
        return None
    L = input_ids.shape[1] - K
    prompts, inverse = torch.unique(
        torch.cat([input_ids[:, :L], attention_mask[:, :L]], dim=1), dim=0, return_inverse=True
    )
    if len(prompts) == len(input_ids):  # no prompt repeats: nothing to share
        return None

    prompt_ids, prompt_mask = prompts[:, :L], prompts[:, L:]
    cache = DynamicCache()
    common = {cache_arg: cache, "use_cache": True, "output_hidden_states": True, "logits_to_keep": 1}
    first = model(
        prompt_ids, attention_mask=prompt_mask, position_ids=position_ids_from_mask(prompt_mask), **common
    )
    # Position L - 1 (a real token: prompts are left-padded) predicts completion token 0.
    hidden = [first.hidden_states[-1][:, -1:].index_select(0, inverse)]
    if not _head_reproduces(head, first.hidden_states[-1][:, -1:], first.logits[:, -1:]):
        return None
    del first
    if K > 1:
        # [U, ...] -> [B, ...]: a differentiable gather of the prompts' keys/values.
        cache.batch_select_indices(inverse)
        positions = position_ids_from_mask(attention_mask)[:, L : L + K - 1]
        rest = model(
            input_ids[:, L : L + K - 1],
            attention_mask=attention_mask[:, : L + K - 1],
            position_ids=positions,
            **common,
        )
        hidden.append(rest.hidden_states[-1])
        del rest
    into_grad = backward_into_grad and _tied_to_input(model, head)
    hidden_states = torch.cat(hidden, dim=1)
    return token_logprobs(hidden_states, input_ids[:, L:], lm_head=head, accumulate_head_grad=into_grad, **options)
