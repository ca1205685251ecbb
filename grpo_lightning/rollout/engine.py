"""Sampling G completions per prompt: the engine protocol, its request and result, masks, EOS handling.

The module hands a :class:`RolloutRequest` to a :class:`RolloutEngine` and gets a :class:`Rollout`
back. ``rollout_engine: auto`` picks :class:`~grpo_lightning.rollout.engines.FastRolloutEngine` (a lean
KV-cache decoding loop) unless a sampling setting needs transformers' ``generate``, which
:class:`HFGenerateEngine` calls. Another engine (vLLM, SGLang) implements the same one-method protocol.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from transformers import GenerationConfig

from grpo_lightning.hf.causal_lm import decodes_in_lockstep
from grpo_lightning.hf.models import eval_mode
from grpo_lightning.rollout.seeds import seeded


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled (the names of ``transformers.GenerationConfig``)."""

    max_completion_length: int = 256
    """Most new tokens per completion; one that reaches it without an EOS is *truncated*."""
    temperature: float = 1.0
    """Softmax temperature; the loss uses the same one for its log-probs."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int | None = None
    """Keep the k most likely tokens (None or 0 = off; transformers' own default of 50 is not applied)."""
    min_p: float | None = None
    """Drop tokens below ``min_p`` times the top probability (None = off)."""
    repetition_penalty: float = 1.0
    """>1 discourages repeats (1.0 = off)."""
    do_sample: bool = True
    """False = greedy decoding (validation)."""
    generation_kwargs: dict[str, Any] | None = None
    """Any other ``GenerationConfig`` field; these win over the fields above (None = none)."""
    seed: int | None = None
    """Base of the per-rank, per-step sampling seeds; None = the ``seed_everything`` seed."""

    def __post_init__(self) -> None:
        if self.max_completion_length < 1:
            raise ValueError(f"max_completion_length={self.max_completion_length!r} must be >= 1.")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature={self.temperature} must be > 0 (sampling needs it; the loss divides by it).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]; 1.0 turns nucleus sampling off.")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0; 0 (or None) turns it off.")

    def generation_config(self, eos_token_ids: Sequence[int], pad_token_id: int) -> GenerationConfig:
        """A complete ``GenerationConfig``: the model's own sampling defaults are deliberately not inherited."""
        sampling = (
            {
                "temperature": self.temperature,
                "top_p": self.top_p,
                "top_k": self.top_k or 0,
                "min_p": self.min_p,
            }
            if self.do_sample
            else {}
        )
        return GenerationConfig(
            max_new_tokens=self.max_completion_length,
            do_sample=self.do_sample,
            repetition_penalty=self.repetition_penalty,
            eos_token_id=list(eos_token_ids),
            pad_token_id=pad_token_id,
            use_cache=True,
            **sampling,
            **(self.generation_kwargs or {}),
        )


@dataclass
class Rollout:
    """``N = P * G`` sampled completions; row ``p * G + g`` is sample g of prompt p."""

    prompt_ids: Tensor
    """[N, L] left-padded prompt ids, each prompt repeated G times."""
    prompt_mask: Tensor
    """[N, L] 1 on prompt tokens, 0 on left padding."""
    completion_ids: Tensor
    """[N, T] generated ids; anything after the first EOS is padding."""
    completion_mask: Tensor
    """[N, T] 1 up to and including the first EOS, 0 after (all 0 for masked truncated rows)."""
    truncated: Tensor
    """[N] bool: reached ``max_completion_length`` without an EOS."""
    lengths: Tensor
    """[N] completion length in tokens, EOS included (before any truncation masking)."""
    sampling_logp: Tensor | None = None
    """[N, T] float32 log-prob of each completion token under the sampling policy, at the loss's
    temperature, 0 where ``completion_mask`` is 0; None when the engine does not report it. The update
    uses it as ``old_logp`` instead of a forward pass (:class:`~grpo_lightning.rollout.engines.FastRolloutEngine`
    reports it)."""

    @property
    def input_ids(self) -> Tensor:
        """[N, L + T] prompt followed by completion."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """[N, L + T] 1 on prompt tokens and on completion tokens up to the first EOS.

        Independent of truncation masking: a masked row still needs its context to be attended.
        """
        positions = torch.arange(self.completion_ids.shape[1], device=self.lengths.device)
        completion = (positions < self.lengths.unsqueeze(1)).to(self.prompt_mask.dtype)
        return torch.cat([self.prompt_mask, completion], dim=1)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, index: Tensor) -> Rollout:
        """The rows ``index`` ([n] long), e.g. the groups kept by dynamic sampling."""
        return Rollout(
            self.prompt_ids[index],
            self.prompt_mask[index],
            self.completion_ids[index],
            self.completion_mask[index],
            self.truncated[index],
            self.lengths[index],
            None if self.sampling_logp is None else self.sampling_logp[index],
        )


def concat_rollouts(rollouts: Sequence[Rollout], pad_token_id: int) -> Rollout:
    """Stack rollouts row-wise, left-padding prompts and right-padding completions to common widths."""
    if len(rollouts) == 1:
        return rollouts[0]
    width_l = max(r.prompt_ids.shape[1] for r in rollouts)
    width_t = max(r.completion_ids.shape[1] for r in rollouts)

    def left(x: Tensor, value: int) -> Tensor:
        return nn.functional.pad(x, (width_l - x.shape[1], 0), value=value)

    def right(x: Tensor, value: int) -> Tensor:
        return nn.functional.pad(x, (0, width_t - x.shape[1]), value=value)

    return Rollout(
        torch.cat([left(r.prompt_ids, pad_token_id) for r in rollouts]),
        torch.cat([left(r.prompt_mask, 0) for r in rollouts]),
        torch.cat([right(r.completion_ids, pad_token_id) for r in rollouts]),
        torch.cat([right(r.completion_mask, 0) for r in rollouts]),
        torch.cat([r.truncated for r in rollouts]),
        torch.cat([r.lengths for r in rollouts]),
        # Only when every part has them: a partial [N, T] would silently mix in zeros.
        None
        if any(r.sampling_logp is None for r in rollouts)
        else torch.cat([right(r.sampling_logp, 0) for r in rollouts]),
    )


def completion_masks(
    completion_ids: Tensor,
    eos_token_ids: Sequence[int],
    max_completion_length: int,
    mask_truncated: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mask, truncation flags and lengths of ``completion_ids: [N, T]``.

    Returns ``mask: [N, T]`` (long; 1 up to and including the first EOS, any of ``eos_token_ids``),
    ``truncated: [N]`` (bool; no EOS although ``max_completion_length`` tokens were generated) and
    ``lengths: [N]`` (tokens up to and including the first EOS, or T). With ``mask_truncated``,
    truncated rows get an all-zero mask so they leave the loss.
    """
    n, t = completion_ids.shape
    is_eos = torch.isin(completion_ids, torch.as_tensor(list(eos_token_ids), device=completion_ids.device))
    has_eos = is_eos.any(dim=1)
    # argmax over a bool tensor gives the first True; rows without EOS keep their full width.
    first_eos = torch.where(
        has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, t, dtype=torch.long)
    )
    lengths = torch.where(has_eos, first_eos + 1, first_eos)
    mask = (torch.arange(t, device=completion_ids.device).expand(n, t) < lengths.unsqueeze(1)).long()
    truncated = ~has_eos & (t >= max_completion_length)
    if mask_truncated:
        mask = mask * (~truncated).long().unsqueeze(1)
    return mask, truncated, lengths


def left_align(input_ids: Tensor, attention_mask: Tensor, pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad ``input_ids: [P, L]`` whatever their padding side, and drop all-padding columns.

    ``generate`` appends to the right end of each row, so right padding would sit inside the
    prompt. A no-op (apart from trimming) for prompts that are already left-padded.
    """
    mask = attention_mask.bool()
    if mask.all():
        return input_ids, attention_mask
    # A stable sort on the mask moves padding (False) before tokens (True) keeping token order.
    order = torch.sort(mask.int(), dim=1, stable=True).indices
    ids = torch.gather(input_ids, 1, order)
    mask = torch.gather(mask, 1, order)
    ids = ids.masked_fill(~mask, pad_token_id)
    width = int(mask.sum(dim=1).max())
    return ids[:, ids.shape[1] - width :], mask[:, mask.shape[1] - width :].to(attention_mask.dtype)


@dataclass(frozen=True, eq=False)
class RolloutRequest:
    """What to sample: ``num_generations`` completions for each of ``P`` prompts (checked when built)."""

    prompt_ids: Tensor
    """[P, L] prompt token ids, padded on either side (the engines left-align them)."""
    prompt_mask: Tensor
    """[P, L] 1 on prompt tokens, 0 on padding."""
    num_generations: int
    """G, completions per prompt: row ``p * G + g`` of the :class:`Rollout` is sample g of prompt p."""
    sampling: SamplingConfig
    """How to sample, ``max_completion_length`` included."""
    eos_token_ids: Sequence[int]
    """Every id that ends a completion (kept as a tuple)."""
    pad_token_id: int
    """The id written after a completion's end and used as prompt padding."""
    seed: int
    """Seed of the sampling draws (see :func:`~grpo_lightning.rollout.seeds.stream_seed`); the caller's RNG state is kept."""
    mask_truncated: bool = False
    """Give completions that reach ``max_completion_length`` without an EOS an all-zero ``completion_mask``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))
        if self.prompt_ids.dim() != 2 or self.prompt_mask.shape != self.prompt_ids.shape:
            raise ValueError(
                f"prompt_ids {tuple(self.prompt_ids.shape)} and prompt_mask {tuple(self.prompt_mask.shape)} "
                "must both be [P, L] (one row per prompt)."
            )
        if self.num_generations < 1:
            raise ValueError(f"num_generations={self.num_generations} must be >= 1.")
        if not self.eos_token_ids:
            raise ValueError("eos_token_ids is empty: completions could never end. Give at least one id.")


@runtime_checkable
class RolloutEngine(Protocol):
    """Anything that turns a :class:`RolloutRequest` into a :class:`Rollout` with the model's current weights.

    ``model`` is the policy being trained, passed on every call because its weights change between
    calls; an engine that keeps a copy of its own (vLLM, SGLang) updates it from there.
    """

    def generate(self, model: nn.Module, request: RolloutRequest) -> Rollout:
        """Sample ``request.num_generations`` completions for each prompt of ``request.prompt_ids: [P, L]``."""
        ...


class HFGenerateEngine:
    """transformers' ``generate``: one batched call over all ``P * G`` rows (``rollout_engine: hf``).

    ``rollout_engine: auto`` uses it when a sampling setting (e.g. ``repetition_penalty``) is one only
    ``generate`` implements. A sharded (FSDP2) model gathers its weights with collectives in every
    forward, so all ranks must take the same number of decoding steps: ``synced_gpus`` keeps every rank
    stepping until all of them are done (transformers does not recognise ``fully_shard`` modules by itself).
    """

    @torch.no_grad()
    def generate(self, model: nn.Module, request: RolloutRequest) -> Rollout:
        """Sample ``request.num_generations`` completions for each prompt of ``request.prompt_ids: [P, L]``."""
        sampling, pad_token_id = request.sampling, request.pad_token_id
        prompt_ids, prompt_mask = left_align(request.prompt_ids, request.prompt_mask, pad_token_id)
        prompt_ids = prompt_ids.repeat_interleave(request.num_generations, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(request.num_generations, dim=0)
        config = sampling.generation_config(request.eos_token_ids, pad_token_id)
        with eval_mode(model), seeded(request.seed, prompt_ids.device):
            out = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                generation_config=config,
                synced_gpus=decodes_in_lockstep(model),
            )
        completion_ids = out[:, prompt_ids.shape[1] :]
        mask, truncated, lengths = completion_masks(
            completion_ids, request.eos_token_ids, sampling.max_completion_length, request.mask_truncated
        )
        return Rollout(prompt_ids, prompt_mask, completion_ids, mask, truncated, lengths)
