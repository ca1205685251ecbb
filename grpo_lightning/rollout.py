"""Sampling G completions per prompt: masks, EOS handling, seeding.

The module talks to a :class:`RolloutEngine`; the default :class:`HFGenerateEngine` calls
``model.generate`` (KV cache, batched over all ``P * G`` rows). A faster engine (vLLM, SGLang)
implements the same one-method protocol and returns the same :class:`Rollout`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from transformers import GenerationConfig

from grpo_lightning.models import eval_mode, is_sharded


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled (the names of ``transformers.GenerationConfig``)."""

    max_completion_length: int = 256
    """Most new tokens per completion; one that reaches it without an EOS is *truncated*."""
    temperature: float = 1.0
    """Softmax temperature; the loss uses the same one for its log-probs."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = off; transformers' own default of 50 is not applied)."""
    min_p: float | None = None
    """Drop tokens below ``min_p`` times the top probability (None = off)."""
    repetition_penalty: float = 1.0
    """>1 discourages repeats (1.0 = off)."""
    do_sample: bool = True
    """False = greedy decoding (validation)."""
    generation_kwargs: dict[str, Any] = field(default_factory=dict)
    """Any other ``GenerationConfig`` field; these win over the fields above."""

    def __post_init__(self) -> None:
        if self.max_completion_length < 1:
            raise ValueError(f"max_completion_length={self.max_completion_length!r} must be >= 1.")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature={self.temperature} must be > 0 (sampling needs it; the loss divides by it).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]; 1.0 turns nucleus sampling off.")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0; 0 (or None) turns it off.")

    def generation_config(self, eos_token_ids: Sequence[int], pad_token_id: int) -> GenerationConfig:
        """A complete ``GenerationConfig``: the model's own sampling defaults are deliberately not inherited."""
        sampling = (
            {
                "temperature": self.temperature,
                "top_p": self.top_p,
                "top_k": self.top_k,
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
            **self.generation_kwargs,
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
    uses it as ``old_logp`` instead of a forward pass (:class:`~grpo_lightning.engines.FastRolloutEngine`
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


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with the global RNG seeded to ``seed``, restoring the caller's RNG state after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=True):
        torch.manual_seed(seed)
        yield


def rollout_seed(base_seed: int, rank: int, step: int, round_: int = 0) -> int:
    """Seed for one generation call: differs per rank, step and dynamic-sampling round; fixed on resume."""
    # Large odd multipliers keep the streams of nearby (rank, step) pairs apart; < 2**63 for manual_seed.
    return (base_seed * 1_000_003 + rank * 7_919 + step * 104_729 + round_ * 15_485_863) % (2**63 - 1)


@runtime_checkable
class RolloutEngine(Protocol):
    """Anything that turns prompts into a :class:`Rollout` with the model's current weights."""

    def generate(
        self,
        model: nn.Module,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        *,
        num_generations: int,
        sampling: SamplingConfig,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        seed: int,
        mask_truncated: bool = False,
    ) -> Rollout:
        """Sample ``num_generations`` completions for each prompt of ``prompt_ids: [P, L]`` (left-padded)."""
        ...


class HFGenerateEngine:
    """The default engine: one batched ``model.generate`` call over all ``P * G`` rows.

    A sharded (FSDP2) model gathers its weights with collectives in every forward, so all ranks
    must take the same number of decoding steps: ``synced_gpus`` keeps every rank stepping until
    all of them are done (transformers does not recognise ``fully_shard`` modules by itself).
    """

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        *,
        num_generations: int,
        sampling: SamplingConfig,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        seed: int,
        mask_truncated: bool = False,
    ) -> Rollout:
        prompt_ids, prompt_mask = left_align(prompt_ids, prompt_mask, pad_token_id)
        prompt_ids = prompt_ids.repeat_interleave(num_generations, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(num_generations, dim=0)
        config = sampling.generation_config(eos_token_ids, pad_token_id)
        synced = (
            is_sharded(model) and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        )
        with eval_mode(model), seeded(seed, prompt_ids.device):
            out = model.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config, synced_gpus=synced
            )
        completion_ids = out[:, prompt_ids.shape[1] :]
        mask, truncated, lengths = completion_masks(
            completion_ids, eos_token_ids, sampling.max_completion_length, mask_truncated
        )
        return Rollout(prompt_ids, prompt_mask, completion_ids, mask, truncated, lengths)
