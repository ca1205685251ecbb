"""Group-relative advantages: pure tensor functions, no state.

A rollout holds P prompts sampled G times each, laid out so that rows ``g*G .. g*G+G-1`` are the
G completions of prompt ``g`` (``repeat_interleave`` order). A reward may be NaN, meaning "not
applicable": it is ignored by every statistic and its advantage is 0.

On several devices call these on the *gathered* global rewards, then slice out the local rows:
the group statistics (and the batch std) must be the same on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from grpo_lightning._checks import check_choice

ScaleRewards = Literal["group", "batch", "none"]
SCALE_REWARDS: tuple[str, ...] = get_args(ScaleRewards)

#: Added to the std before dividing, so a group whose rewards barely differ cannot blow up.
DEFAULT_EPS = 1e-4


@dataclass(frozen=True)
class GroupStats:
    """NaN-aware statistics of each prompt's G rewards (for advantages and for metrics)."""

    mean: Tensor
    """[P] mean of the valid rewards; 0 for a group without any valid reward."""
    std: Tensor
    """[P] sample std (Bessel's correction) of the valid rewards; 0 with fewer than two."""
    count: Tensor
    """[P] number of valid (non-NaN) rewards, int64."""
    zero_std: Tensor
    """[P] bool: the group's valid rewards have no spread (all exactly equal, or fewer than two), so
    it contributes no gradient (:func:`zero_spread`)."""


def _check_rewards(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}.")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1 (the number of generations per prompt), got {group_size}.")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"{rewards.numel()} rewards cannot be split into groups of {group_size}: the number of completions "
            "must be a multiple of num_generations (G consecutive rows per prompt)."
        )
    # Integer or bool rewards are fine to pass; the statistics need a floating dtype.
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    if torch.isinf(rewards).any():  # host sync; rewards are tiny and usually on the CPU anyway
        raise ValueError(
            "rewards hold +/-inf; a reward function must return a finite float, or None when it does not apply."
        )
    return rewards


def _nan_mean_std(x: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, sample std and count of the non-NaN entries of ``x`` along ``dim``.

    Fewer than two valid entries give std 0; no valid entry gives mean 0. Never returns NaN.
    """
    valid = ~torch.isnan(x)
    count = valid.sum(dim)
    filled = torch.where(valid, x, torch.zeros_like(x))
    mean = filled.sum(dim) / count.clamp(min=1)
    centred = torch.where(valid, x - mean.unsqueeze(dim), torch.zeros_like(x))
    var = centred.pow(2).sum(dim) / (count - 1).clamp(min=1)
    std = torch.where(count >= 2, var.sqrt(), torch.zeros_like(var))
    return mean, std, count


def group_stats(rewards: Tensor, group_size: int) -> GroupStats:
    """Per-prompt statistics of ``rewards: [N]`` grouped ``group_size`` consecutive rows at a time.

    Returns a :class:`GroupStats` whose fields have shape ``[P]`` with ``P = N // group_size``.
    """
    return _group_stats(_check_rewards(rewards, group_size), group_size)


def zero_spread(rewards: Tensor, group_size: int) -> Tensor:
    """``[P]`` bool: the group's valid (non-NaN) rewards are all exactly equal, or fewer than two.

    The one test of "this group carries no signal", used by the advantages, the metrics and dynamic
    sampling alike. It compares the rewards themselves, not their computed std: eight float32
    rewards of 1.2 have a float32 mean that is not exactly 1.2, so their std is a rounding leftover
    of ~1e-8, not 0, yet they are equal.
    """
    groups = rewards.view(-1, group_size)
    valid = ~torch.isnan(groups)
    high = torch.where(valid, groups, torch.full_like(groups, float("-inf"))).amax(dim=1)
    low = torch.where(valid, groups, torch.full_like(groups, float("inf"))).amin(dim=1)
    return (valid.sum(dim=1) < 2) | (high == low)


def _group_stats(rewards: Tensor, group_size: int) -> GroupStats:
    mean, std, count = _nan_mean_std(rewards.view(-1, group_size), dim=1)
    zero_std = zero_spread(rewards, group_size)
    # Equal rewards: the mean is that value exactly and the std exactly 0, so advantages are exactly 0.
    first_valid = torch.nan_to_num(rewards.view(-1, group_size), nan=float("inf")).amin(dim=1)
    mean = torch.where(zero_std & (count > 0), first_valid, mean)
    std = torch.where(zero_std, torch.zeros_like(std), std)
    return GroupStats(mean=mean, std=std, count=count, zero_std=zero_std)


def compute_advantages(
    rewards: Tensor,
    group_size: int,
    scale_rewards: ScaleRewards = "group",
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Group-relative advantages ``A: [N]`` from ``rewards: [N]`` (NaN = not applicable).

    ``A = r - mean_g``, divided by ``std_g + eps`` (``"group"``), by the NaN-aware sample std of
    the whole batch plus ``eps`` (``"batch"``), or not at all (``"none"``, Dr. GRPO). A group with
    fewer than two valid rewards, and every NaN reward, gets advantage 0. The result never holds NaN.
    """
    check_choice("scale_rewards", scale_rewards, SCALE_REWARDS)
    rewards = _check_rewards(rewards, group_size)
    stats = _group_stats(rewards, group_size)
    centred = rewards - stats.mean.repeat_interleave(group_size)
    if scale_rewards == "group":
        advantages = centred / (stats.std.repeat_interleave(group_size) + eps)
    elif scale_rewards == "batch":
        _, batch_std, _ = _nan_mean_std(rewards, dim=0)
        advantages = centred / (batch_std + eps)
    else:
        advantages = centred
    # Fewer than two valid rewards: no comparison is possible, so no signal (the centred value of a
    # lone reward is 0 already; this makes it exact and covers the NaN rows too).
    informative = (stats.count >= 2).repeat_interleave(group_size)
    advantages = torch.where(informative, advantages, torch.zeros_like(advantages))
    return torch.nan_to_num(advantages, nan=0.0)
