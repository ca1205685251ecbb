"""Calling the reward functions: columns, weights, ``None``/NaN, time limits, and errors that name the
culprit (the function and the sample).

A reward function is ``f(prompts, completions, **columns) -> list[float | None]``: one value per
completion, ``None`` (or NaN) meaning "not applicable". The total reward is the weighted sum of the
applicable terms; it is NaN (ignored by the statistics) only when no term applies. As in TRL, the
prompts and completions are strings, or message lists for conversational prompts
(:func:`grpo_lightning.rewards.conversation.reward_inputs`); errors quote the texts.

Each call gets its own copy of the prompts, the completions and every column
(:func:`fresh_copy`), so a reward that edits its inputs cannot change what the next reward, the
logged completions or the rollout see. Rewards are stored as float32: a value beyond its range
(3.4e38), or a weighted total beyond it, is an error naming the reward.
"""

from __future__ import annotations

import copy
import math
import numbers
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from grpo_lightning._checks import check_choice
from grpo_lightning.rewards.conversation import reward_inputs
from grpo_lightning.rewards.registry import RewardFunc, resolve_reward
from grpo_lightning.rewards.workers import CallFailure, RewardWorkerPool, score_in_workers


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


#: Types whose values cannot change: a reward may share them.
_IMMUTABLE = frozenset((str, bytes, int, float, complex, bool, type(None)))


def fresh_copy(value: Any) -> Any:
    """A copy of a reward's input that shares nothing mutable with ``value``.

    Lists, tuples and dicts are rebuilt, tensors cloned, strings and numbers shared (they cannot
    change), anything else deep-copied. A list of strings or numbers (prompts, completions, token
    ids) is one ``list()`` call after a type check in C: this runs once per reward function and step
    (tens of milliseconds for 512 completions of 1024 token ids).
    """
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if kind is list or kind is tuple:
        if _IMMUTABLE.issuperset(map(type, value)):
            return list(value) if kind is list else value
        items = [fresh_copy(v) for v in value]
        return items if kind is list else tuple(items)
    if kind is dict:
        return {k: fresh_copy(v) for k, v in value.items()}
    if isinstance(value, Tensor):
        return value.clone()
    return copy.deepcopy(value)


#: Rewards are stored, summed and gathered as float32.
REWARD_DTYPE = torch.float32
_REWARD_MAX = torch.finfo(REWARD_DTYPE).max


def combine_rewards(per_func: Tensor, weights: Tensor) -> Tensor:
    """Weighted sum ``[N]`` of ``per_func: [N, K]`` with ``weights: [K]``; NaN terms are skipped.

    A row is NaN only when every one of its K terms is NaN. Summed in float64 and rounded once to
    ``per_func``'s dtype (where a total beyond its range is inf: :meth:`RewardScorer.combine` refuses it).
    """
    valid = ~torch.isnan(per_func)
    terms = per_func.double() * weights.double()
    total = torch.where(valid, terms, torch.zeros_like(terms)).sum(dim=1)
    total = torch.where(valid.any(dim=1), total, torch.full_like(total, float("nan")))
    return total.to(per_func.dtype)


def reward_ranges(per_func: Tensor, names: Sequence[str], weights: Sequence[float]) -> str:
    """One line per reward function: the range of its applicable values in ``per_func: [N, K]``
    and its weight (for errors about the rewards' scale)."""
    lines = []
    for k, (name, weight) in enumerate(zip(names, weights, strict=True)):
        column = per_func[:, k]
        valid = column[~column.isnan()]
        spans = (
            f"[{float(valid.min()):.3g}, {float(valid.max()):.3g}]" if valid.numel() else "None everywhere"
        )
        lines.append(f"  reward {name!r} (weight {weight:g}): {spans}")
    return "\n".join(lines)


#: A reward call slower than this (seconds) in the training process is reported once.
SLOW_CALL_S = 10.0
RewardErrors = Literal["raise", "none"]


class RewardScorer:
    """Calls each reward function on a batch of completions and returns a ``[N, K]`` float tensor.

    Args:
        reward_funcs: callables, registered names or import paths (see ``resolve_reward``).
        reward_weights: one weight per function (default: all 1).
        workers: score in this many worker processes, one call per completion
            (:mod:`grpo_lightning.rewards.workers`); 0 = in this process, one call per function.
        timeout: seconds one call may take in a worker (needs ``workers >= 1``); None = no limit.
        errors: what a failing call (an exception, a timeout, a crashed worker) does: ``"raise"``
            stops with an error naming the reward and the sample; ``"none"`` scores that completion
            None (not applicable) and warns.
    """

    def __init__(
        self,
        reward_funcs: Sequence[RewardFunc | str],
        reward_weights: Sequence[float] | None = None,
        workers: int = 0,
        timeout: float | None = None,
        errors: RewardErrors = "raise",
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
        # float64: a weight beyond the float32 range must not turn into inf (0 * inf would be NaN).
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self._warned_nan: set[str] = set()
        self._warned: set[tuple[str, str]] = set()
        check_choice("reward_errors", errors, ("raise", "none"))
        if timeout is not None and workers < 1:
            raise ValueError(
                f"reward_timeout={timeout} needs reward_workers >= 1: a call in the training process cannot be "
                "stopped. Set reward_workers (e.g. 4) or drop reward_timeout."
            )
        self.errors = errors
        self.pool = RewardWorkerPool(self.funcs, workers, timeout) if workers > 0 else None

    def __len__(self) -> int:
        return len(self.funcs)

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Any] | None = None
    ) -> Tensor:
        """Rewards ``[N, K]`` (float32, CPU; NaN = not applicable) for N completions and K functions.

        ``prompts`` and ``completions`` are the N texts; a conversational batch (its ``columns`` hold the
        rows' messages) calls the rewards with messages instead, as TRL does.
        """
        columns = dict(columns or {})
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(
                f"Got {len(prompts)} prompts for {n} completions; pass one prompt per completion."
            )
        given = reward_inputs(prompts, completions, columns)
        out = torch.empty(n, len(self.funcs), dtype=REWARD_DTYPE)
        if self.pool is not None:
            per_func, failures = score_in_workers(
                self.pool, self.names, *given, columns, fail_fast=self.errors == "raise"
            )
            self._failed(failures, prompts, completions)
            for k, name in enumerate(self.names):
                out[:, k] = self._check_values(name, per_func[k], n, prompts, completions)
            return out
        for k, (fn, name) in enumerate(zip(self.funcs, self.names, strict=True)):
            start = time.monotonic()
            try:
                values = fn(
                    prompts=fresh_copy(given[0]), completions=fresh_copy(given[1]), **fresh_copy(columns)
                )
            except Exception as err:
                if self.errors == "raise":
                    raise self._explain_failure(fn, name, given, prompts, completions, columns, err) from err
                values = self._one_by_one(k, given, prompts, completions, columns)
            self._warn_once(
                name,
                "slow",
                time.monotonic() - start > SLOW_CALL_S,
                f"Reward function {name!r} took {time.monotonic() - start:.0f}s for {n} completions, in the "
                "training process, where a call that hangs cannot be stopped. Run rewards in worker processes "
                "with a time limit: reward_workers=4, reward_timeout=<seconds>.",
            )
            out[:, k] = self._check_values(name, values, n, prompts, completions)
        return out

    def _one_by_one(
        self,
        k: int,
        given: tuple[list[Any], list[Any]],
        prompts: Sequence[str],
        completions: Sequence[str],
        columns: Mapping[str, Any],
    ) -> list[Any]:
        """``errors="none"``: score completion by completion (``given``: the reward's inputs, from
        :func:`reward_inputs`; ``prompts``, ``completions``: their texts, for the warning); those that
        raise score None (warned)."""
        values: list[Any] = []
        failures = []
        for i in range(len(completions)):
            row = {c: [v[i]] if _is_per_sample(v, len(completions)) else v for c, v in columns.items()}
            try:
                (value,) = self.funcs[k](
                    prompts=fresh_copy([given[0][i]]), completions=fresh_copy([given[1][i]]), **fresh_copy(row)
                )
            except Exception as err:
                value = None
                failures.append((k, i, CallFailure(f"raised {type(err).__name__}: {err}")))
            values.append(value)
        self._failed(failures, prompts, completions)
        return values

    def _failed(
        self,
        failures: Sequence[tuple[int, int, CallFailure]],
        prompts: Sequence[str],
        completions: Sequence[str],
    ) -> None:
        """Raise for the first failed call (``errors="raise"``), or warn once per function that failed."""
        n = len(completions)
        for k in sorted({f[0] for f in failures}):
            mine = [f for f in failures if f[0] == k]
            _, i, failure = mine[0]
            name = self.names[k]
            sample = f"  prompt: {_short(prompts[i])!r}\n  completion: {_short(completions[i])!r}"
            if self.errors == "raise":
                raise RewardError(
                    f"Reward function {name!r} {failure.reason} on completion {i} of {n}\n{sample}\n"
                    "Set reward_errors='none' to score such completions None and go on."
                )
            warnings.warn(
                f"Reward function {name!r} gave no score for {len(mine)} of {n} completions; they score None "
                f"(reward_errors='none'). First: {failure.reason} on completion {i}\n{sample}",
                stacklevel=3,
            )

    def _warn_once(self, name: str, kind: str, condition: bool, message: str) -> None:
        if condition and (name, kind) not in self._warned:
            self._warned.add((name, kind))
            warnings.warn(message, stacklevel=3)

    def combine(self, per_func: Tensor) -> Tensor:
        """Weighted total ``[N]`` of ``per_func: [N, K]`` (see :func:`combine_rewards`); a total
        beyond the float32 range is an error naming the rewards and their weights."""
        total = combine_rewards(per_func, self.weights.to(per_func.device))
        overflow = torch.isinf(total).nonzero().flatten()
        if overflow.numel():
            i = int(overflow[0])
            exact = float(combine_rewards(per_func[i : i + 1].double(), self.weights.double())[0])
            raise RewardError(
                f"The weighted total reward of completion {i} is {exact:.3g}, beyond the float32 range rewards "
                f"are stored in (+-{_REWARD_MAX:.3g}). The rewards and their weights:\n"
                f"{reward_ranges(per_func, self.names, self.weights.tolist())}\n"
                "Lower reward_weights or rescale the rewards (divide them by a constant)."
            )
        return total

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
        self._warn_once(
            name,
            "none",
            n > 0 and all(v is None for v in values),
            f"Reward function {name!r} returned None for all {n} completions of a step: it applies to none of "
            "them, so it gives no learning signal. Check the columns it needs (e.g. 'answer') and its input format.",
        )
        result = torch.empty(n, dtype=REWARD_DTYPE)
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
                if abs(v) > _REWARD_MAX:
                    raise RewardError(
                        f"Reward function {name!r} returned {v!r} for completion {i}, beyond the float32 range "
                        f"rewards are stored in (+-{_REWARD_MAX!r}). Rescale the reward (divide it by a constant: "
                        "the advantages of scale_rewards='group' or 'batch' do not depend on its scale).\n"
                        f"  prompt: {_short(prompts[i])!r}\n  completion: {_short(completions[i])!r}"
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
        given: tuple[list[Any], list[Any]],
        prompts: Sequence[str],
        completions: Sequence[str],
        columns: Mapping[str, Any],
        err: Exception,
    ) -> RewardError:
        """Find the first sample that makes ``fn`` raise on its own (called with ``given``, the reward's
        inputs), to show its texts in the error."""
        for i in range(len(completions)):
            row = {k: [v[i]] if _is_per_sample(v, len(completions)) else v for k, v in columns.items()}
            try:
                fn(prompts=fresh_copy([given[0][i]]), completions=fresh_copy([given[1][i]]), **fresh_copy(row))
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
