"""Turning a batch of prompts into a scored rollout (:func:`sample_and_score`), and the reward
functions' columns. Calling the reward functions themselves is :mod:`grpo_lightning.reward_scorer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from grpo_lightning.batch import PROMPT_KEYS
from grpo_lightning.config import check_context_length, context_length
from grpo_lightning.reward_scorer import (  # noqa: F401 (this module's public names before the split)
    RewardError,
    RewardFunc,
    RewardScorer,
    combine_rewards,
    reward_name,
)
from grpo_lightning.rollout import Rollout, RolloutRequest, SamplingConfig, concat_rollouts

if TYPE_CHECKING:
    from grpo_lightning.module import GRPOModule

#: Extra columns the module passes to every reward besides the dataset's own.
EXTRA_COLUMNS = ("completion_ids", "completion_lengths", "truncated", "max_completion_length")


def repeat_columns(batch: Mapping[str, Any], num_generations: int, skip: Sequence[str]) -> dict[str, Any]:
    """The batch's per-prompt columns, each value repeated ``num_generations`` times in place.

    Lists and tuples become lists ``[a, a, ..., b, b, ...]``; tensors are ``repeat_interleave``-d
    along dim 0; other values (scalars) are passed unchanged.
    """
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key in skip:
            continue
        if isinstance(value, Tensor) and value.dim() > 0:
            out[key] = value.repeat_interleave(num_generations, dim=0)
        elif isinstance(value, (list, tuple)):
            out[key] = [v for v in value for _ in range(num_generations)]
        else:
            out[key] = value
    return out


# ---- scoring a rollout ------------------------------------------------------------------------


@dataclass
class ScoredRollout:
    """A rollout with its texts and rewards; N rows, G per prompt."""

    rollout: Rollout
    prompts: list[str]
    """[N] prompt text of each row."""
    completions: list[str]
    """[N] decoded completions (up to the first EOS, special tokens dropped)."""
    per_func: Tensor
    """[N, K] reward of each function (NaN = not applicable), CPU float32."""
    total: Tensor
    """[N] weighted total reward, CPU float32."""
    columns: dict[str, Any]
    """The columns the rewards saw (dataset columns repeated per row, plus the extras)."""

    def select(self, rows: Tensor) -> ScoredRollout:
        idx = rows.tolist()
        return ScoredRollout(
            self.rollout.select(rows.to(self.rollout.completion_ids.device)),
            [self.prompts[i] for i in idx],
            [self.completions[i] for i in idx],
            self.per_func[rows],
            self.total[rows],
            {k: _take(v, idx) for k, v in self.columns.items()},
        )


def _take(value: Any, idx: list[int]) -> Any:
    """Rows ``idx`` of a per-row column (list or tensor); other values (scalars) unchanged."""
    if isinstance(value, Tensor) and value.dim() > 0:
        return value[torch.as_tensor(idx, device=value.device)]
    if isinstance(value, (list, tuple)):
        return [value[i] for i in idx]
    return value


def prompt_batch(module: GRPOModule, batch: dict[str, Any]) -> tuple[Tensor, Tensor, list[str]]:
    """``input_ids, attention_mask: [P, L]`` and the P prompt texts of a batch.

    A batch without ``input_ids`` is tokenized from ``prompt`` with the module's tokenizer; one
    without ``prompt`` is decoded from ``input_ids``.
    """
    tok = module.tokenizer
    if "input_ids" not in batch:
        if "prompt" not in batch:
            raise KeyError(f"A batch needs 'prompt' (texts) or 'input_ids'; got keys {sorted(batch)}.")
        enc = tok(list(batch["prompt"]), return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(module.device), enc["attention_mask"].to(module.device)
    else:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask", torch.ones_like(ids))
    texts = list(batch["prompt"]) if "prompt" in batch else tok.batch_decode(ids, skip_special_tokens=True)
    # The DataModule's prompts were checked at setup; this covers batches from anywhere else. The
    # padded width bounds the longest prompt without a host-device sync; only a batch that might not
    # fit pays for counting its real lengths.
    limit, completion = context_length(module.policy), module.sampling.max_completion_length
    if limit is not None and ids.shape[1] + completion > limit:
        check_context_length(int(mask.sum(dim=1).max()), completion, limit, "in this batch")
    return ids, mask, texts


def sample_and_score(
    module: GRPOModule,
    batch: dict[str, Any],
    *,
    num_generations: int,
    sampling: SamplingConfig,
    seed: int,
    scorer: RewardScorer,
    mask_truncated: bool = False,
) -> ScoredRollout:
    """Generate ``num_generations`` completions per prompt of ``batch`` and score them."""
    ids, mask, texts = prompt_batch(module, batch)
    request = RolloutRequest(
        ids,
        mask,
        num_generations=num_generations,
        sampling=sampling,
        eos_token_ids=module.eos_token_ids,
        pad_token_id=module.tokenizer.pad_token_id,
        seed=seed,
        mask_truncated=mask_truncated,
    )
    try:
        rollout = module.rollout_engine.generate(module.policy, request)
    except RuntimeError as err:  # generate's sampler: "probability tensor contains either inf, nan or ..."
        if "inf" in str(err) and "nan" in str(err):
            raise non_finite_logits_error(module.policy) from err
        raise
    # The engines that report their log-probs: one NaN/inf logit makes the chosen token's log-prob NaN.
    if rollout.sampling_logp is not None and not bool(torch.isfinite(rollout.sampling_logp).all()):
        raise non_finite_logits_error(module.policy)
    lengths = rollout.lengths.tolist()  # host sync: decoding needs the ids on the CPU anyway
    token_lists = [row[:n] for row, n in zip(rollout.completion_ids.tolist(), lengths, strict=True)]
    completions = module.tokenizer.batch_decode(token_lists, skip_special_tokens=True)
    prompts = [t for t in texts for _ in range(num_generations)]
    columns = repeat_columns(batch, num_generations, skip=PROMPT_KEYS)
    clash = sorted(set(columns) & set(EXTRA_COLUMNS))
    if clash:
        raise ValueError(
            f"Dataset columns {clash} clash with columns the module passes to rewards; rename them."
        )
    columns.update(
        completion_ids=token_lists,
        completion_lengths=lengths,
        truncated=rollout.truncated.tolist(),
        max_completion_length=sampling.max_completion_length,
    )
    per_func = scorer.score(prompts, completions, columns)
    return ScoredRollout(rollout, prompts, completions, per_func, scorer.combine(per_func), columns)


def non_finite_logits_error(policy: Any) -> FloatingPointError:
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


def concat_scored(parts: list[ScoredRollout], pad_token_id: int) -> ScoredRollout:
    """Stack scored rollouts row-wise (dynamic sampling's extra rounds)."""
    return ScoredRollout(
        concat_rollouts([p.rollout for p in parts], pad_token_id),
        [t for p in parts for t in p.prompts],
        [t for p in parts for t in p.completions],
        torch.cat([p.per_func for p in parts]),
        torch.cat([p.total for p in parts]),
        {k: _join([p.columns[k] for p in parts]) for k in parts[0].columns},
    )


def _join(values: list[Any]) -> Any:
    """Concatenate one column of several rollouts (lists or tensors; scalars are taken from the first)."""
    if isinstance(values[0], Tensor) and values[0].dim() > 0:
        return torch.cat(values)
    if isinstance(values[0], (list, tuple)):
        return [v for part in values for v in part]
    return values[0]
