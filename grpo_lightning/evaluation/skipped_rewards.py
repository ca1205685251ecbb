"""Rewards that cannot run on a batch because it lacks a column they need (unlabelled prompts).

``predict`` on prompts without gold answers (``require_answer: false``) still writes completions:
an accuracy reward, which needs the ``answer`` column, is not called, and its value is null. A
reward needs a column when it names it as ``answer_column`` (the built-in accuracy rewards) or its
signature requires a parameter of that name besides ``prompts`` and ``completions``
(``def my_reward(prompts, completions, answer, **columns)``).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from grpo_lightning.batch import PROMPT_KEYS
from grpo_lightning.rewards.scorer import RewardScorer
from grpo_lightning.rewards.workers import PoolView
from grpo_lightning.rollout.scoring import EXTRA_COLUMNS

#: Parameters every reward gets, whatever the data's columns.
_ALWAYS_GIVEN = ("prompts", "completions")


def needed_columns(fn: Any) -> list[str]:
    """The data columns ``fn`` cannot run without: its ``answer_column`` and the parameters its
    signature requires (no default) besides ``prompts`` and ``completions``."""
    needed = []
    column = getattr(fn, "answer_column", None)
    if isinstance(column, str):
        needed.append(column)
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing more is known
        return needed
    required = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for p in parameters:
        if p.kind in required and p.default is p.empty and p.name not in (*_ALWAYS_GIVEN, *needed):
            needed.append(p.name)
    return needed


def reward_columns(batch: Mapping[str, Any]) -> set[str]:
    """The columns the rewards get for a prompt batch (see :func:`grpo_lightning.rollout.scoring.score_rollout`)."""
    return (set(batch) - set(PROMPT_KEYS)) | set(EXTRA_COLUMNS)


def skipped_rewards(names: Sequence[str], funcs: Sequence[Any], columns: Collection[str]) -> dict[str, str]:
    """``{reward name: why it cannot run}`` for the rewards that need a column not in ``columns``."""
    skipped = {}
    for name, fn in zip(names, funcs, strict=True):
        missing = [c for c in needed_columns(fn) if c not in columns]
        if missing:
            what = ", ".join(repr(c) for c in missing)
            skipped[name] = f"needs the column {what}, which the data does not have (unlabelled prompts)"
    return skipped


class SkippingScorer:
    """``scorer`` with the rewards in ``skipped`` left out: their column of the ``[N, K]`` rewards is
    NaN (null in predictions) and they are never called. The others run as in ``scorer`` (its
    workers, time limit and error handling), and the total is the weighted sum of theirs.
    """

    def __init__(self, scorer: RewardScorer, skipped: Collection[str]) -> None:
        self.full = scorer
        self.keep = [k for k, name in enumerate(scorer.names) if name not in skipped]
        self.names = scorer.names
        self.funcs = scorer.funcs
        self.part: RewardScorer | None = None
        if self.keep:
            # workers=0 here, then a view of the scorer's pool: no second set of processes is started.
            self.part = RewardScorer(
                [scorer.funcs[k] for k in self.keep], [float(scorer.weights[k]) for k in self.keep], errors=scorer.errors
            )
            self.part.names = [scorer.names[k] for k in self.keep]  # named as in the full scorer
            if scorer.pool is not None:
                self.part.pool = PoolView(scorer.pool, self.keep)  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.full)

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Any] | None = None
    ) -> Tensor:
        """Rewards ``[N, K]`` (NaN for the skipped rewards)."""
        out = torch.full((len(completions), len(self.full)), float("nan"))
        if self.part is not None:
            out[:, self.keep] = self.part.score(prompts, completions, columns).to(out.dtype)
        return out

    def combine(self, per_func: Tensor) -> Tensor:
        """The weighted total ``[N]`` of the rewards that ran (NaN terms are left out)."""
        return self.full.combine(per_func)


_made: weakref.WeakKeyDictionary[RewardScorer, dict[frozenset[str], SkippingScorer]] = weakref.WeakKeyDictionary()


def skipping_scorer(scorer: RewardScorer, skipped: Collection[str]) -> SkippingScorer:
    """One :class:`SkippingScorer` per scorer and set of skipped rewards, kept for the scorer's
    life, so that its warnings (once per reward) are given once per run, not once per batch."""
    per_scorer = _made.setdefault(scorer, {})
    key = frozenset(skipped)
    if key not in per_scorer:
        per_scorer[key] = SkippingScorer(scorer, key)
    return per_scorer[key]
