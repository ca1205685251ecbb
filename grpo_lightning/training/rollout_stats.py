"""From a scored rollout to advantages and the step's metrics.

``global_advantages`` gathers every rank's rewards (one collective) so that the advantages and the
logged values are those of the global batch; ``rollout_metrics`` is a pure function of what it
gathered, and the module logs the result.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from grpo_lightning.algorithm.advantages import (
    ADVANTAGE_ESTIMATORS,
    DEFAULT_EPS,
    AdvantageRangeError,
    ScaleRewards,
    group_stats,
)
from grpo_lightning.rewards.scorer import RewardScorer, reward_ranges
from grpo_lightning.rollout.scoring import ScoredRollout
from grpo_lightning.training.collectives import Collectives

#: Loss-side metrics of the update that are logged as ``train/<key>`` when present.
LOSS_METRICS = (
    "loss",
    "grad_norm",
    "lr",
    "entropy",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "kl",
)


#: The largest advantage whose square float32 holds (~1.8e19). The gradients scale with the
#: advantages, and the gradient norm and AdamW's second moment square them: beyond this they turn
#: inf and the update is lost (measured on the tiny model: advantages of ~6e23 give grad_norm inf
#: and unchanged weights). Only ``scale_rewards="none"`` can get there; scaled advantages are O(1).
GRADIENT_SAFE_ADVANTAGE = math.sqrt(torch.finfo(torch.float32).max)


def check_gradient_range(advantages: Tensor) -> None:
    """Raise :class:`AdvantageRangeError` when an advantage ``[N]`` is beyond :data:`GRADIENT_SAFE_ADVANTAGE`."""
    peak = float(advantages.abs().amax()) if advantages.numel() else 0.0
    if peak > GRADIENT_SAFE_ADVANTAGE:
        raise AdvantageRangeError(
            f"scale_rewards='none': an advantage (a reward minus its group's mean) reaches {peak:.3g}. The "
            f"gradients scale with it and their squares overflow float32 beyond {GRADIENT_SAFE_ADVANTAGE:.2g} "
            "(the gradient norm and AdamW's second moment turn inf and the update is lost). Rescale the rewards "
            "(divide them by a constant), or use scale_rewards='group' or 'batch', whose advantages do not depend "
            "on the reward scale."
        )


#: A step whose largest advantage is below this learns close to nothing, and says so: its gradients
#: are of the same order (about 1.2x on the tiny model), which an Adam-type optimizer's eps (1e-8 by
#: default) swamps. Measured with AdamW at lr 1e-3 on the tiny model: largest advantages of ~1e-5
#: move the weights by a full step, ~1e-9 by 0.7% of one, ~1e-26 (rewards of 1e-30) by 5e-21 of one.
TINY_ADVANTAGE = 1e-8


def tiny_advantage_warning(
    advantages: Tensor, total: Tensor, num_generations: int, scale_rewards: ScaleRewards
) -> str | None:
    """The warning for a step whose non-zero advantages ``[N]`` are all below :data:`TINY_ADVANTAGE`
    (rewards ``total: [N]`` too close together for their scale), or None."""
    peak = float(advantages.abs().amax()) if advantages.numel() else 0.0
    if peak == 0.0 or peak >= TINY_ADVANTAGE:
        return None
    std = float(group_stats(total, num_generations).std.amax())
    batch_std = float(group_stats(total, len(total)).std[0])
    if scale_rewards == "batch" and batch_std >= DEFAULT_EPS:
        # Scale-free: the rewards of one prompt barely differ next to how much the prompts differ.
        why = f", next to a std of {batch_std:.2g} over the whole batch (scale_rewards='batch')"
        fix = "Use scale_rewards='group', or a reward that tells a prompt's completions further apart."
    else:
        eps = scale_rewards != "none"
        why = (
            f", far below the eps={DEFAULT_EPS:g} that scale_rewards={scale_rewards!r} adds to it"
            if eps
            else ""
        )
        fix = "Multiply the rewards by a constant" + (
            f" (a reward std well above {DEFAULT_EPS:g} gives advantages of order 1)." if eps else "."
        )
    return (
        f"The largest advantage of a training step is {peak:.2g}: the rewards' std within a prompt is at most "
        f"{std:.2g}{why}. Gradients this small barely move the weights (an Adam-type optimizer's eps, 1e-8 by "
        f"default, swamps them), so the step learns close to nothing. {fix}"
    )


def global_advantages(
    scored: ScoredRollout,
    num_generations: int,
    scale_rewards: ScaleRewards,
    collectives: Collectives,
    scorer: RewardScorer,
) -> tuple[Tensor, dict[str, Tensor]]:
    """This rank's advantages ``[N]`` from statistics over every rank's rewards, and the gathered values.

    The gathered dict holds ``total: [W * N]``, ``per_func: [W * N, K]``, ``lengths``, ``truncated``
    and ``advantages`` (all ``[W * N]``, rank 0's rows first), on the collectives' device.
    ``scorer`` (the rewards' names and weights) only names the rewards in an error.
    """
    rollout = scored.rollout
    local = {
        "total": scored.total.to(collectives.device),
        "per_func": scored.per_func.to(collectives.device),
        "lengths": rollout.lengths.float(),
        "truncated": rollout.truncated.float(),
    }
    gathered = collectives.all_gather(local)
    estimator = ADVANTAGE_ESTIMATORS.get(scale_rewards)
    try:
        advantages = estimator(gathered["total"], num_generations)
        if not estimator.scale_free:
            check_gradient_range(advantages)
    except AdvantageRangeError as err:
        ranges = reward_ranges(gathered["per_func"], scorer.names, scorer.weights.tolist())
        raise AdvantageRangeError(f"{err}\n{ranges}") from None
    tiny = tiny_advantage_warning(advantages, gathered["total"], num_generations, scale_rewards)
    if tiny is not None:
        rank_zero_warn(tiny)
    gathered["advantages"] = advantages
    n, rank = len(scored.total), collectives.rank
    return advantages[rank * n : (rank + 1) * n], gathered


def rollout_metrics(
    gathered: dict[str, Tensor],
    reward_names: list[str],
    num_generations: int,
    losses: dict[str, Tensor],
    *,
    rollout_s: float,
    update_s: float,
) -> dict[str, Tensor | float]:
    """Every training metric of one step, from the gathered rollout (see :func:`global_advantages`),
    the update's ``losses`` and the step's timings (seconds).

    Reward means skip NaN (a reward that does not apply); a reward function with no value in the
    whole batch logs NaN. Reward and advantage statistics are float64: finite for any finite float32
    reward (a float32 sum or square of rewards near 1e38 would be inf).
    """
    total, per_func, lengths = gathered["total"].double(), gathered["per_func"].double(), gathered["lengths"]
    stats = group_stats(total, num_generations)
    values: dict[str, Tensor | float] = {
        "train/reward": total.nanmean(),
        "train/reward_std": stats.std.mean(),
        "train/advantage_abs_mean": gathered["advantages"].double().abs().mean(),
        "train/frac_zero_std_groups": stats.zero_std.float().mean(),
        "train/completions/mean_length": lengths.mean(),
        "train/completions/min_length": lengths.min(),
        "train/completions/max_length": lengths.max(),
        "train/completions/clipped_ratio": gathered["truncated"].mean(),
        "perf/rollout_s": rollout_s,
        "perf/update_s": update_s,
        "perf/tokens_per_s": float(lengths.sum()) / max(rollout_s + update_s, 1e-9),
    }
    for k, name in enumerate(reward_names):
        column = per_func[:, k]
        valid = column[~column.isnan()]
        values[f"train/rewards/{name}/mean"] = valid.mean() if valid.numel() else float("nan")
        values[f"train/rewards/{name}/std"] = valid.std() if valid.numel() > 1 else 0.0
    values.update({f"train/{key}": losses[key] for key in LOSS_METRICS if key in losses})
    return values
