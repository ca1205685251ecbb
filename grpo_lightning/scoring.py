"""Calling the reward functions: columns, weights, ``None``/NaN, and errors that name the culprit.

A reward function is ``f(prompts, completions, **columns) -> list[float | None]``: one value per
completion, ``None`` (or NaN) meaning "not applicable". The total reward is the weighted sum of the
applicable terms; it is NaN (ignored by the statistics) only when no term applies.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from grpo_lightning.rewards.registry import resolve_reward

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
