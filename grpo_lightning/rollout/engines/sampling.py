"""Choosing the next token from a step's logits, exactly as ``generate`` does, plus its log-prob.

The warpers (top-k, top-p, min-p) are transformers' own classes, so the distribution sampled from is
the one ``generate`` samples from. The log-prob returned for each chosen token is the one the loss
uses: ``log_softmax(logits / temperature)`` *before* any filtering (top-k/p, min_new_tokens), the
quantity :func:`grpo_lightning.logprobs.sequence_logprobs` recomputes. It can therefore stand in for
the old-policy log-probs without another forward pass.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import GenerationConfig
from transformers.generation.logits_process import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

# GenerationConfig fields this sampler reproduces; any other non-default field needs ``generate``.
_SUPPORTED_FIELDS = frozenset(
    {
        "max_new_tokens",
        "min_new_tokens",
        "do_sample",
        "use_cache",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "suppress_tokens",
        "pad_token_id",
        "eos_token_id",
        "bos_token_id",
        "transformers_version",
    }
)


@dataclass(frozen=True)
class TokenSampler:
    """One decoding step's token choice: ``generate``'s logits processors, then sampling or argmax."""

    eos_token_ids: tuple[int, ...]
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float | None = None
    min_new_tokens: int = 0
    suppress_tokens: tuple[int, ...] = ()

    @classmethod
    def from_generation_config(cls, config: GenerationConfig, eos_token_ids: Sequence[int]) -> TokenSampler:
        """The sampler for ``config``; a clear error for settings only ``generate`` implements."""
        diff = config.to_diff_dict()
        neutral = {"repetition_penalty": 1.0, "num_beams": 1, "num_return_sequences": 1}
        unsupported = sorted(
            k
            for k, v in diff.items()
            if k not in _SUPPORTED_FIELDS and not (k in neutral and neutral[k] == v)
        )
        if unsupported:
            raise ValueError(
                f"The fast rollout engine does not implement the generation setting(s) {unsupported}. Remove them "
                "from the sampling settings (generation_kwargs / repetition_penalty), or sample with transformers' "
                "generate (rollout_engine='hf'; rollout_engine='auto' picks it by itself for such settings)."
            )
        sample = bool(config.do_sample)
        return cls(
            eos_token_ids=tuple(int(i) for i in eos_token_ids),
            do_sample=sample,
            temperature=float(config.temperature) if sample and config.temperature is not None else 1.0,
            top_k=int(config.top_k or 0) if sample else 0,
            top_p=float(config.top_p) if sample and config.top_p is not None else 1.0,
            min_p=float(config.min_p) if sample and config.min_p is not None else None,
            min_new_tokens=int(config.min_new_tokens or 0),
            suppress_tokens=tuple(int(i) for i in (config.suppress_tokens or ())),
        )

    def __call__(
        self, logits: Tensor, step: int, logp_temperature: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """Pick the next token of every row.

        Args:
            logits: [N, V] the model's next-token logits (any float dtype).
            step: how many tokens were generated before this one (0 for the first).
            logp_temperature: temperature of the returned log-probs (default: the sampling temperature;
                greedy decoding has none, so the caller may name the one its loss uses).

        Returns:
            ``tokens: [N]`` long and ``logp: [N]`` float32, ``log_softmax(logits / T)`` of each chosen
            token before any filtering.
        """
        z = logits.float()
        t_logp = self.temperature if logp_temperature is None else logp_temperature
        scaled = z / t_logp if t_logp != 1.0 else z
        lse = torch.logsumexp(scaled, dim=-1, keepdim=True)
        # Ids generate gives -inf: EOS before min_new_tokens (its length processor), suppressed tokens.
        banned = list(self.suppress_tokens)
        if step < self.min_new_tokens:
            banned += self.eos_token_ids
        banned_ids = _ids(tuple(banned), z.device) if banned else None
        warped = self.top_k > 0 or self.top_p < 1.0 or self.min_p is not None
        if self.do_sample and not warped and self.temperature == t_logp:
            # softmax(z / T) with the banned ids removed: one exp pass reusing the logsumexp above.
            probs = (scaled - lse).exp_()
            if banned_ids is not None:
                probs.index_fill_(-1, banned_ids, 0.0)
            tokens = sample_categorical(probs)
        else:
            # Same order as generate: length and suppression processors, then temperature and the warpers.
            scores = z.index_fill(-1, banned_ids, float("-inf")) if banned_ids is not None else z
            if not self.do_sample:
                tokens = scores.argmax(dim=-1)
            else:
                if self.temperature != 1.0:
                    scores = scores / self.temperature
                if self.top_k:
                    scores = TopKLogitsWarper(top_k=self.top_k)(None, scores)
                if self.top_p < 1.0:
                    scores = TopPLogitsWarper(top_p=self.top_p)(None, scores)
                if self.min_p is not None:
                    scores = MinPLogitsWarper(min_p=self.min_p)(None, scores)
                tokens = sample_categorical(torch.softmax(scores, dim=-1))
        # logp = z_tok - logsumexp(z): no [N, V] log-softmax is kept.
        logp = scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse.squeeze(-1)
        return tokens, logp


def sample_categorical(probs: Tensor, block: int = 1024) -> Tensor:
    """One draw per row of ``probs: [N, V]`` (non-negative, not necessarily normalised) -> ``[N]`` long.

    Inverts the cumulative distribution with one uniform number per row. (``torch.multinomial``
    draws one exponential number per *entry*, argmax of p / Exp(1): 130 ms for 32 x 152k on a CPU
    core.) Two levels keep it exact and cheap: a float64 cumulative sum over blocks of ``block``
    entries picks the block, a float64 one inside the chosen block picks the token. A float32 cumsum
    over the whole row would round away tokens below ~1e-7 of the mass. A token of probability 0 is
    never drawn.
    """
    n, vocab = probs.shape
    wide = torch.float32 if probs.device.type == "mps" else torch.float64  # MPS has no float64
    if vocab <= block:  # one block: its cumulative sum is the whole distribution (half the operations)
        cdf = probs.to(wide).cumsum(-1)  # [N, V]
        total = cdf[:, -1:]
        u = torch.rand(n, 1, dtype=wide, device=probs.device) * total
        r = torch.minimum(
            u, torch.nextafter(total, torch.zeros_like(total))
        )  # rounding must not reach the end
        return torch.searchsorted(cdf, r, right=True).squeeze(1).clamp_(max=vocab - 1)
    pad = -vocab % block
    blocks = nn.functional.pad(probs, (0, pad)).view(n, -1, block)  # [N, B, block]
    block_cdf = blocks.sum(-1).to(wide).cumsum(-1)  # [N, B]
    u = torch.rand(n, 1, dtype=wide, device=probs.device) * block_cdf[:, -1:]
    b = torch.searchsorted(block_cdf, u, right=True).clamp_(max=block_cdf.shape[1] - 1)  # [N, 1]
    before = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(u))
    inner_cdf = blocks.gather(1, b.unsqueeze(-1).expand(n, 1, block)).squeeze(1).to(wide).cumsum(-1)
    # Position inside the block, rescaled to the block's own float64 total so it stays below it.
    share = (u - before) / (block_cdf.gather(1, b) - before)
    inner_total = inner_cdf[:, -1:]
    r = torch.minimum(
        share.clamp(min=0) * inner_total, torch.nextafter(inner_total, torch.zeros_like(inner_total))
    )
    t = torch.searchsorted(inner_cdf, r, right=True).squeeze(1)
    # A row of NaN/inf makes searchsorted run off the end; keep the id a valid index (the caller sees the
    # row's NaN log-prob and reports the cause) instead of failing in the next embedding lookup.
    return (b.squeeze(1) * block + t).clamp_(max=vocab - 1)


@functools.lru_cache(maxsize=64)
def _ids(ids: tuple[int, ...], device: torch.device) -> Tensor:
    """``ids`` as a long tensor on ``device``, built once: no host-to-device copy per decoding step."""
    return torch.tensor(ids, dtype=torch.long, device=device)
