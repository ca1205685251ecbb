"""Group-relative advantages: pure tensor functions, no state.

A rollout holds P prompts sampled G times each, laid out so that rows ``g*G .. g*G+G-1`` are the
G completions of prompt ``g`` (``repeat_interleave`` order). A reward may be NaN, meaning "not
applicable": it is ignored by every statistic and its advantage is 0.

The statistics are exact for any finite reward scale: they are computed in float64 on rewards
divided by a power of two (each group's largest magnitude brought to [0.5, 1)), which changes no
bit of the result, as a power-of-two factor commutes with every rounding, but keeps the sums of
squares of 1e30 or 3e38 from overflowing and those of 1e-30 from underflowing. The advantages of
``"group"`` and ``"batch"`` scaling are bounded by the group size whatever the scale; those of
``"none"`` are reward differences and must fit the output dtype (:class:`AdvantageRangeError`).

On several devices call these on the *gathered* global rewards, then slice out the local rows:
the group statistics (and the batch std) must be the same on every rank.

The ``scale_rewards`` setting picks a registered :class:`AdvantageEstimator`
(:data:`ADVANTAGE_ESTIMATORS`). Add one: a subclass here decorated with
``@ADVANTAGE_ESTIMATORS.register``, its name added to :data:`ScaleRewards`, and a test of its values
and declared properties (``tests/test_advantages.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from grpo_lightning.algorithm.registry import Registry

#: The valid ``scale_rewards`` values, spelled out for type checkers and LightningCLI (which shows
#: them as the setting's choices). It must list :data:`ADVANTAGE_ESTIMATORS`' names in the same
#: order; a test fails when the two differ.
ScaleRewards = Literal["group", "batch", "none"]

#: Added to the std before dividing, so a group whose rewards barely differ cannot blow up.
DEFAULT_EPS = 1e-4

#: Bounds of the power-of-two exponent that rescales a group: float64 holds 2**+-1000 and the
#: ``eps`` scaled along with it (1e-4 * 2**1000 ~ 1e297); only float64 subnormals get less than [0.5, 1).
_MAX_EXPONENT = 1000


class AdvantageRangeError(ValueError):
    """Advantages of ``scale_rewards="none"`` that do not fit the output dtype."""


@dataclass(frozen=True)
class GroupStats:
    """NaN-aware statistics of each prompt's G rewards (for advantages and for metrics), float64."""

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


def _exponent(x: Tensor, dim: int | None = None) -> Tensor:
    """``e`` with ``max |x| * 2**-e`` in [0.5, 1) (NaN ignored; 0 when all are 0 or NaN), int32.

    ``dim`` None: one exponent for all of ``x`` (a 0-d tensor); otherwise kept as a size-1 dim.
    """
    magnitude = torch.nan_to_num(x.abs(), nan=0.0)
    peak = magnitude.amax() if dim is None else magnitude.amax(dim=dim, keepdim=True)
    _, exponent = torch.frexp(peak)
    return exponent.clamp(-_MAX_EXPONENT, _MAX_EXPONENT)


def _pow2(exponent: Tensor) -> Tensor:
    """``2.0 ** exponent`` in float64, exact (multiplying by it changes no mantissa bit)."""
    return torch.ldexp(torch.ones_like(exponent, dtype=torch.float64), exponent)


def _nan_mean_std(x: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, sample std and count of the non-NaN entries of ``x`` along ``dim``.

    Fewer than two valid entries give std 0; no valid entry gives mean 0. Never returns NaN.
    The caller keeps ``x`` within float range of its squares (see :func:`_exponent`).
    """
    valid = ~torch.isnan(x)
    count = valid.sum(dim)
    filled = torch.where(valid, x, torch.zeros_like(x))
    mean = filled.sum(dim) / count.clamp(min=1)
    centred = torch.where(valid, x - mean.unsqueeze(dim), torch.zeros_like(x))
    var = centred.pow(2).sum(dim) / (count - 1).clamp(min=1)
    std = torch.where(count >= 2, var.sqrt(), torch.zeros_like(var))
    return mean, std, count


@dataclass(frozen=True)
class ScaledGroups:
    """Each group's rewards divided by ``2**exponent`` and their statistics, float64, ``[P, G]``/``[P]``."""

    scaled: Tensor
    exponent: Tensor
    """[P, 1] int32."""
    mean: Tensor
    std: Tensor
    count: Tensor
    zero_std: Tensor


def _scaled_groups(rewards: Tensor, group_size: int) -> ScaledGroups:
    groups = rewards.view(-1, group_size).double()
    exponent = _exponent(groups, dim=1)
    scaled = groups * _pow2(-exponent)
    mean, std, count = _nan_mean_std(scaled, dim=1)
    zero_std = zero_spread(rewards, group_size)
    # Equal rewards: the mean is that value exactly and the std exactly 0, so advantages are exactly 0.
    first_valid = torch.nan_to_num(scaled, nan=float("inf")).amin(dim=1)
    mean = torch.where(zero_std & (count > 0), first_valid, mean)
    std = torch.where(zero_std, torch.zeros_like(std), std)
    return ScaledGroups(scaled, exponent, mean, std, count, zero_std)


def group_stats(rewards: Tensor, group_size: int) -> GroupStats:
    """Per-prompt statistics of ``rewards: [N]`` grouped ``group_size`` consecutive rows at a time.

    Returns a :class:`GroupStats` whose fields have shape ``[P]`` with ``P = N // group_size``, in
    float64: finite for every finite float32 reward (a spread near float64's own limit of 1.8e308
    can only come from float64 rewards, and gives inf).
    """
    g = _scaled_groups(_check_rewards(rewards, group_size), group_size)
    exponent = g.exponent.squeeze(1)
    return GroupStats(
        mean=g.mean * _pow2(exponent),
        std=g.std * _pow2(exponent),
        count=g.count,
        zero_std=g.zero_std,
    )


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


class AdvantageEstimator(ABC):
    """One ``scale_rewards``: group-relative advantages ``A: [N]`` from ``rewards: [N]``.

    Every estimator centres each reward on its group's mean (``r - mean_g``) and scales the
    centred values its own way (:meth:`scale`). It declares ``scale_free``: its advantages do not
    depend on the reward scale (they are bounded by the group size); one that is not (``none``)
    gives reward differences, which must fit the output dtype and the gradients' float32 range.
    """

    name: ClassVar[str]
    scale_free: ClassVar[bool]

    @abstractmethod
    def scale(self, centred: Tensor, groups: ScaledGroups, rewards: Tensor, eps: float) -> Tensor:
        """The advantages ``[P, G]`` of ``centred: [P, G]`` (each group's rewards minus its mean), in
        the units of ``groups.scaled`` (the true values times ``2**-groups.exponent``, per group)
        unless it multiplies that factor back. ``rewards: [N]`` are the checked inputs, ``eps`` is
        added to any std divided by. Pure."""

    def __call__(self, rewards: Tensor, group_size: int, eps: float = DEFAULT_EPS) -> Tensor:
        """Advantages ``[N]`` in the rewards' floating dtype (float32 for integer rewards), never NaN.

        A group with fewer than two valid rewards, and every NaN reward, gets advantage 0. The values
        are those of the formula in float64, rounded once to the output dtype, for any finite reward
        scale. Raises :class:`AdvantageRangeError` when an advantage of an estimator that is not
        ``scale_free`` overflows the dtype.
        """
        rewards = _check_rewards(rewards, group_size)
        g = _scaled_groups(rewards, group_size)
        # Every value below is the true one times 2**-exponent: exact, as long as nothing overflows.
        centred = torch.where(g.zero_std.unsqueeze(1), 0.0, g.scaled - g.mean.unsqueeze(1))
        advantages = self.scale(centred, g, rewards, eps)
        # Fewer than two valid rewards: no comparison is possible, so no signal (the centred value of a
        # lone reward is 0 already; this makes it exact and covers the NaN rows too).
        informative = (g.count >= 2).unsqueeze(1) & ~torch.isnan(g.scaled)
        advantages = torch.where(informative, advantages, 0.0).flatten().to(rewards.dtype)
        if not self.scale_free and not bool(torch.isfinite(advantages).all()):
            raise AdvantageRangeError(_overflow_message(self.name, rewards, group_size, g))
        return advantages


ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("scale_rewards")


@ADVANTAGE_ESTIMATORS.register
class GroupStd(AdvantageEstimator):
    """``group`` (GRPO): ``A = (r - mean_g) / (std_g + eps)``, with the group's sample std."""

    name = "group"
    scale_free = True

    def scale(self, centred: Tensor, groups: ScaledGroups, rewards: Tensor, eps: float) -> Tensor:
        return centred / (groups.std.unsqueeze(1) + eps * _pow2(-groups.exponent))


@ADVANTAGE_ESTIMATORS.register
class BatchStd(AdvantageEstimator):
    """``batch``: ``A = (r - mean_g) / (std + eps)``, with the NaN-aware sample std of the whole batch."""

    name = "batch"
    scale_free = True

    def scale(self, centred: Tensor, groups: ScaledGroups, rewards: Tensor, eps: float) -> Tensor:
        whole = rewards.double()
        batch_exponent = _exponent(whole)
        _, batch_std, _ = _nan_mean_std(whole * _pow2(-batch_exponent), dim=0)
        shift = _pow2(groups.exponent - batch_exponent)  # <= 1: a group's scale is at most the batch's
        return centred * shift / (batch_std + eps * _pow2(-batch_exponent))


@ADVANTAGE_ESTIMATORS.register
class Unscaled(AdvantageEstimator):
    """``none`` (Dr. GRPO): ``A = r - mean_g``, the reward differences themselves."""

    name = "none"
    scale_free = False

    def scale(self, centred: Tensor, groups: ScaledGroups, rewards: Tensor, eps: float) -> Tensor:
        return centred * _pow2(groups.exponent)


def compute_advantages(
    rewards: Tensor,
    group_size: int,
    scale_rewards: ScaleRewards = "group",
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Group-relative advantages ``A: [N]`` from ``rewards: [N]`` (NaN = not applicable) by the
    estimator registered as ``scale_rewards`` (see :meth:`AdvantageEstimator.__call__`).

    ``A = r - mean_g``, divided by ``std_g + eps`` (``"group"``), by the NaN-aware sample std of
    the whole batch plus ``eps`` (``"batch"``), or not at all (``"none"``, Dr. GRPO).
    """
    return ADVANTAGE_ESTIMATORS.get(scale_rewards)(rewards, group_size, eps)


def _overflow_message(name: str, rewards: Tensor, group_size: int, g: ScaledGroups) -> str:
    spread = (torch.nan_to_num(g.scaled - g.mean.unsqueeze(1), nan=0.0).abs() * _pow2(g.exponent)).amax()
    finite = rewards[~torch.isnan(rewards)]
    return (
        f"scale_rewards={name!r}: an advantage (a reward minus its group's mean) reaches {float(spread):.3g}, "
        f"beyond the {rewards.dtype} range (+-{torch.finfo(rewards.dtype).max:.3g}); the rewards span "
        f"[{float(finite.min()):.3g}, {float(finite.max()):.3g}] in groups of {group_size}. Rescale the "
        f"rewards (divide them by a constant), or use scale_rewards={_scale_free_names()}, whose advantages do "
        "not depend on the reward scale."
    )


def _scale_free_names() -> str:
    """The ``scale_free`` estimators' names, for an error's fix: ``'group' or 'batch'``."""
    names = [n for n in ADVANTAGE_ESTIMATORS.names if ADVANTAGE_ESTIMATORS.get(n).scale_free]
    return " or ".join(repr(n) for n in names)
