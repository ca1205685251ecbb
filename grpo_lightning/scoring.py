"""Calling the reward functions: columns, weights, ``None``/NaN, and errors that name the culprit;
and :func:`sample_and_score`, which turns a batch of prompts into a scored rollout.

A reward function is ``f(prompts, completions, **columns) -> list[float | None]``: one value per
completion, ``None`` (or NaN) meaning "not applicable". The total reward is the weighted sum of the
applicable terms; it is NaN (ignored by the statistics) only when no term applies.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from grpo_lightning.config import check_context_length, context_length
from grpo_lightning.rewards.registry import resolve_reward
from grpo_lightning.rollout import Rollout, SamplingConfig, concat_rollouts

if TYPE_CHECKING:
    from grpo_lightning.module import GRPOModule

RewardFunc = Callable[..., Sequence[float | None]]

#: Extra columns the module passes to every reward besides the dataset's own.
EXTRA_COLUMNS = ("completion_ids", "completion_lengths", "truncated", "max_completion_length")


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable."""


def reward_name(fn: Any) -> str:
    """A readable name for metrics (``train/rewards/<name>/mean``): ``__name__`` or the class name."""
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str):
        inner = getattr(fn, "func", None)  # functools.partial
        name = getattr(inner, "__name__", None) or type(fn).__name__
    return name


def _unique_names(funcs: Sequence[Any]) -> list[str]:
    names: list[str] = []
    for fn in funcs:
        name, k = reward_name(fn), 2
        while name in names:
            name = f"{reward_name(fn)}_{k}"
            k += 1
        names.append(name)
    return names


def _short(text: Any, limit: int = 300) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2 :]


def combine_rewards(per_func: Tensor, weights: Tensor) -> Tensor:
    """Weighted sum ``[N]`` of ``per_func: [N, K]`` with ``weights: [K]``; NaN terms are skipped.

    A row is NaN only when every one of its K terms is NaN.
    """
    valid = ~torch.isnan(per_func)
    total = torch.where(valid, per_func * weights, torch.zeros_like(per_func)).sum(dim=1)
    return torch.where(valid.any(dim=1), total, torch.full_like(total, float("nan")))


class RewardScorer:
    """Calls each reward function on a batch of completions and returns a ``[N, K]`` float tensor.

    Args:
        reward_funcs: callables, registered names or import paths (see ``resolve_reward``).
        reward_weights: one weight per function (default: all 1).
    """

    def __init__(
        self, reward_funcs: Sequence[RewardFunc | str], reward_weights: Sequence[float] | None = None
    ) -> None:
        if not reward_funcs:
            raise ValueError(
                "No reward function: pass reward_funcs (callables, registered names or import paths)."
            )
        self.funcs: list[RewardFunc] = [resolve_reward(f) for f in reward_funcs]
        self.names = _unique_names(self.funcs)
        weights = [1.0] * len(self.funcs) if reward_weights is None else [float(w) for w in reward_weights]
        if len(weights) != len(self.funcs):
            raise ValueError(
                f"reward_weights has {len(weights)} entries but there are {len(self.funcs)} reward functions "
                f"({', '.join(self.names)}); give one weight per function."
            )
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"reward_weights must be finite numbers, got {weights}.")
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self._warned_nan: set[str] = set()

    def __len__(self) -> int:
        return len(self.funcs)

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Any] | None = None
    ) -> Tensor:
        """Rewards ``[N, K]`` (float32, CPU; NaN = not applicable) for N completions and K functions."""
        columns = dict(columns or {})
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(
                f"Got {len(prompts)} prompts for {n} completions; pass one prompt per completion."
            )
        out = torch.empty(n, len(self.funcs), dtype=torch.float32)
        for k, (fn, name) in enumerate(zip(self.funcs, self.names, strict=True)):
            try:
                values = fn(prompts=list(prompts), completions=list(completions), **columns)
            except Exception as err:
                raise self._explain_failure(fn, name, prompts, completions, columns, err) from err
            out[:, k] = self._check_values(name, values, n, prompts, completions)
        return out

    def combine(self, per_func: Tensor) -> Tensor:
        """Weighted total ``[N]`` of ``per_func: [N, K]`` (see :func:`combine_rewards`)."""
        return combine_rewards(per_func, self.weights.to(per_func.device))

    def _check_values(
        self, name: str, values: Any, n: int, prompts: Sequence[str], completions: Sequence[str]
    ) -> Tensor:
        if isinstance(values, Tensor):
            values = values.detach().cpu().flatten().tolist()
        if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
            raise RewardError(
                f"Reward function {name!r} returned {type(values).__name__}; it must return a list with one "
                f"float (or None) per completion ({n} here)."
            )
        values = list(values)
        if len(values) != n:
            raise RewardError(
                f"Reward function {name!r} returned {len(values)} values for {n} completions; it must return "
                "exactly one float (or None) per completion, in the order given."
            )
        result = torch.empty(n, dtype=torch.float32)
        for i, v in enumerate(values):
            if isinstance(v, Tensor) and v.numel() == 1:
                v = v.item()
            if v is None:
                result[i] = float("nan")
            elif isinstance(v, numbers.Real):
                v = float(v)
                if math.isinf(v):
                    raise RewardError(
                        f"Reward function {name!r} returned {v} for completion {i}; rewards must be finite "
                        f"(use None for 'not applicable').\n  prompt: {_short(prompts[i])!r}\n"
                        f"  completion: {_short(completions[i])!r}"
                    )
                if math.isnan(v) and name not in self._warned_nan:
                    self._warned_nan.add(name)
                    warnings.warn(
                        f"Reward function {name!r} returned NaN; it is treated as None (not applicable). "
                        "Return None explicitly to silence this warning.",
                        stacklevel=2,
                    )
                result[i] = v
            else:
                raise RewardError(
                    f"Reward function {name!r} returned {v!r} ({type(v).__name__}) for completion {i}; "
                    f"each value must be a float or None.\n  prompt: {_short(prompts[i])!r}\n"
                    f"  completion: {_short(completions[i])!r}"
                )
        return result

    @staticmethod
    def _explain_failure(
        fn: RewardFunc,
        name: str,
        prompts: Sequence[str],
        completions: Sequence[str],
        columns: Mapping[str, Any],
        err: Exception,
    ) -> RewardError:
        """Find the first sample that makes ``fn`` raise on its own, to show it in the error."""
        for i in range(len(completions)):
            row = {k: [v[i]] if _is_per_sample(v, len(completions)) else v for k, v in columns.items()}
            try:
                fn(prompts=[prompts[i]], completions=[completions[i]], **row)
            except Exception as single:
                return RewardError(
                    f"Reward function {name!r} raised {type(single).__name__}: {single}\n"
                    f"  on completion {i} of {len(completions)}\n  prompt: {_short(prompts[i])!r}\n"
                    f"  completion: {_short(completions[i])!r}"
                )
        return RewardError(
            f"Reward function {name!r} raised {type(err).__name__}: {err} (on the batch of {len(completions)} "
            "completions; no single completion raises on its own)."
        )


def _is_per_sample(value: Any, n: int) -> bool:
    return isinstance(value, (list, tuple, Tensor)) and len(value) == n


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

PROMPT_KEYS = ("prompt", "input_ids", "attention_mask")


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
    # The DataModule's prompts were checked at setup; this covers batches from anywhere else.
    longest = int(mask.sum(dim=1).max())
    check_context_length(longest, module.sampling.max_completion_length, context_length(module.policy), "in this batch")
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
    rollout = module.rollout_engine.generate(
        module.policy,
        ids,
        mask,
        num_generations=num_generations,
        sampling=sampling,
        eos_token_ids=module.eos_token_ids,
        pad_token_id=module.tokenizer.pad_token_id,
        seed=seed,
        mask_truncated=mask_truncated,
    )
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
