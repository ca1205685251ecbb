"""Scoring a sampled rollout: the columns the reward functions get, and the scored rollout.

Sampling is :mod:`grpo_lightning.rollout.sampler`; calling the reward functions (weights, workers, errors)
is :mod:`grpo_lightning.rewards.scorer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from grpo_lightning.batch import PROMPT_KEYS
from grpo_lightning.rewards.scorer import RewardScorer
from grpo_lightning.rollout.engine import Rollout, concat_rollouts

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


def score_rollout(
    scorer: RewardScorer,
    batch: Mapping[str, Any],
    rollout: Rollout,
    prompts: list[str],
    completions: list[str],
    completion_ids: list[list[int]],
    max_completion_length: int,
) -> ScoredRollout:
    """Call the reward functions on a decoded rollout of ``batch``'s P prompts (G rows each).

    ``prompts``: the P prompt texts; ``completions`` and ``completion_ids``: the N = P * G decoded
    completions and their token lists up to the first EOS. The rewards get each row's prompt and
    completion, the batch's own columns repeated per row (``prompt``, ``input_ids`` and
    ``attention_mask`` left out) and the extras of :data:`EXTRA_COLUMNS`.
    """
    num_generations = len(rollout) // max(len(prompts), 1)
    columns = repeat_columns(batch, num_generations, skip=PROMPT_KEYS)
    clash = sorted(set(columns) & set(EXTRA_COLUMNS))
    if clash:
        raise ValueError(
            f"Dataset columns {clash} clash with columns the module passes to rewards; rename them."
        )
    columns.update(
        completion_ids=completion_ids,
        completion_lengths=[len(ids) for ids in completion_ids],
        truncated=rollout.truncated.tolist(),
        max_completion_length=max_completion_length,
    )
    rows = [t for t in prompts for _ in range(num_generations)]
    per_func = scorer.score(rows, completions, columns)
    return ScoredRollout(rollout, rows, completions, per_func, scorer.combine(per_func), columns)


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
