"""The sampler: a batch of prompts in, a scored rollout out.

:class:`Sampler` holds what sampling needs (the policy, its tokenizer and EOS ids, the rollout
engine, the reward scorer and the training sampling settings) and nothing of the training loop, so
it can be built and used without a ``GRPOModule`` or a ``Trainer``::

    sampler = Sampler(policy, tokenizer, engine, eos_token_ids, scorer, sampling, num_generations=4)
    scored = sampler.rollout(batch, seed=0)  # ScoredRollout: P * G rows, rewards per function

``GRPOModule.configure_model`` builds one once the policy is final (LoRA applied, sharded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from grpo_lightning.hf.causal_lm import check_context_length, context_length
from grpo_lightning.rewards.scorer import RewardScorer
from grpo_lightning.rollout.engine import RolloutEngine, RolloutRequest, SamplingConfig
from grpo_lightning.rollout.scoring import ScoredRollout, score_rollout


@dataclass(eq=False)
class Sampler:
    """Samples ``num_generations`` completions per prompt of a batch and scores them.

    A batch is a dict with ``prompt`` (P texts) and/or ``input_ids``/``attention_mask`` ([P, L],
    any padding side), plus any other per-prompt columns, which reach the reward functions.
    """

    policy: nn.Module
    """The model that samples (the one being trained)."""
    tokenizer: PreTrainedTokenizerBase
    """Tokenizes text-only batches and decodes completions; its ``pad_token_id`` pads."""
    engine: RolloutEngine
    """Generates the completions (``generate``, the fast engine or a custom one)."""
    eos_token_ids: Sequence[int]
    """Any of these ends a completion."""
    scorer: RewardScorer
    """The reward functions of training (evaluation may pass another scorer)."""
    sampling: SamplingConfig
    """How training rollouts are sampled."""
    num_generations: int
    """G, completions per prompt in a training rollout."""
    mask_truncated: bool = False
    """Training rollouts: leave completions that hit the length limit without EOS out of the loss."""

    @property
    def device(self) -> torch.device:
        """Where the policy's weights are (text-only batches are tokenized onto it)."""
        first = next(self.policy.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def rollout(self, batch: dict[str, Any], seed: int) -> ScoredRollout:
        """A training rollout of ``batch``: ``P * num_generations`` rows, scored by :attr:`scorer`."""
        return self.sample(
            batch,
            seed,
            num_generations=self.num_generations,
            sampling=self.sampling,
            mask_truncated=self.mask_truncated,
        )

    def sample(
        self,
        batch: dict[str, Any],
        seed: int,
        *,
        num_generations: int,
        sampling: SamplingConfig,
        scorer: RewardScorer | None = None,
        mask_truncated: bool = False,
    ) -> ScoredRollout:
        """``num_generations`` completions per prompt of ``batch`` with ``sampling``, scored by
        ``scorer`` (default: :attr:`scorer`). Row ``p * G + g`` is sample g of prompt p."""
        ids, mask, texts = self.prompts(batch, sampling.max_completion_length)
        # Built before the try: a request refused when built is not a sampling error.
        request = RolloutRequest(
            ids,
            mask,
            num_generations=num_generations,
            sampling=sampling,
            eos_token_ids=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            seed=seed,
            mask_truncated=mask_truncated,
        )
        try:
            rollout = self.engine.generate(self.policy, request)
        except RuntimeError as err:
            # generate's sampler: "probability tensor contains either inf, nan or element < 0"
            if "inf" in str(err) and "nan" in str(err):
                raise non_finite_logits_error(self.policy) from err
            raise
        # The engines that report their log-probs: one NaN/inf logit makes the chosen token's log-prob NaN.
        if rollout.sampling_logp is not None and not bool(torch.isfinite(rollout.sampling_logp).all()):
            raise non_finite_logits_error(self.policy)
        lengths = rollout.lengths.tolist()  # host sync: decoding needs the ids on the CPU anyway
        token_lists = [row[:n] for row, n in zip(rollout.completion_ids.tolist(), lengths, strict=True)]
        completions = self.tokenizer.batch_decode(token_lists, skip_special_tokens=True)
        return score_rollout(
            scorer if scorer is not None else self.scorer,
            batch,
            rollout,
            texts,
            completions,
            token_lists,
            sampling.max_completion_length,
        )

    def prompts(self, batch: dict[str, Any], max_completion_length: int) -> tuple[Tensor, Tensor, list[str]]:
        """``input_ids, attention_mask: [P, L]`` and the P prompt texts of a batch.

        A batch without ``input_ids`` is tokenized from ``prompt``; one without ``prompt`` is decoded
        from ``input_ids``. Fails when the longest prompt plus ``max_completion_length`` does not fit
        the policy's context.
        """
        tok = self.tokenizer
        num_prompts(batch)  # a batch with neither column fails here, naming its keys
        if "input_ids" not in batch:
            enc = tok(list(batch["prompt"]), return_tensors="pt", padding=True, add_special_tokens=False)
            ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        else:
            ids = batch["input_ids"]
            mask = batch.get("attention_mask", torch.ones_like(ids))
        texts = (
            list(batch["prompt"]) if "prompt" in batch else tok.batch_decode(ids, skip_special_tokens=True)
        )
        # The DataModule's prompts were checked at setup; this covers batches from anywhere else. The
        # padded width bounds the longest prompt without a host-device sync; only a batch that might not
        # fit pays for counting its real lengths.
        limit = context_length(self.policy)
        if limit is not None and ids.shape[1] + max_completion_length > limit:
            check_context_length(int(mask.sum(dim=1).max()), max_completion_length, limit, "in this batch")
        return ids, mask, texts


def non_finite_logits_error(policy: nn.Module) -> FloatingPointError:
    """The error for NaN/inf logits while sampling, naming the policy's non-finite weights if any."""
    bad = [name for name, p in policy.named_parameters() if not bool(torch.isfinite(p).all())]
    where = (
        f"{len(bad)} weight tensors hold NaN/inf (e.g. {bad[:3]})"
        if bad
        else "its weights are finite, so an activation overflowed (fp16 is the usual cause: use bf16 or fp32)"
    )
    return FloatingPointError(
        f"The policy produced NaN/inf logits while sampling: {where}. Usual causes: a learning rate too high "
        "for the model, fp16 overflow, a damaged checkpoint or model file. Resume from an earlier checkpoint "
        "with a lower learning_rate (and max_grad_norm set), or check the model's weights."
    )


def num_prompts(batch: dict[str, Any]) -> int:
    """P, the prompts in a batch (rows of ``input_ids``, else texts of ``prompt``)."""
    if "input_ids" in batch:
        return int(batch["input_ids"].shape[0])
    if "prompt" in batch:
        return len(batch["prompt"])
    raise KeyError(f"A batch needs 'prompt' (texts) or 'input_ids'; got keys {sorted(batch)}.")
