"""The clipped GRPO objective: pure tensor functions, no state.

Notation (shapes): ``B`` completions in this call, ``T`` completion positions. ``logp``, ``old_logp``
and ``ref_logp`` are per-token log-probs ``[B, T]`` under the policy being trained, the policy that
sampled the completions and the frozen reference; ``mask: [B, T]`` is 1 on real completion tokens
(up to and including the first EOS) and 0 elsewhere; ``advantages: [B]``.

The ratio is taken against the *sampling* policy (``old_logp``), as in PPO, DeepSeekMath and every
peer; the reference enters only through the k3 KL penalty. (Some write-ups put pi_ref in the ratio:
that is a typo of the standard algorithm.)

Per-token term, with ``rho`` the importance ratio and ``A`` the advantage::

    l = -min(min(rho, delta) * A, clip(rho, 1 - epsilon, 1 + epsilon_high) * A) + beta * kl
    kl = exp(ref - logp) - (ref - logp) - 1        (k3 estimator, >= 0, only when beta > 0)

Aggregation (``loss_type``, :mod:`~grpo_lightning.algorithm.aggregations`) over one optimizer step's
mini-batch, which may be split into micro-batches and ranks. Pass ``normalizer`` = the sum of the
aggregation's :meth:`~grpo_lightning.algorithm.aggregations.Aggregation.count` over the whole
mini-batch (every micro-batch, all-reduced over ranks) and *sum* the per-call losses: the gradient
is then independent of the split. ``normalizer=None`` uses this call's own count, so one call over
the whole mini-batch gives the textbook value:

- ``grpo``: mean over sequences of each sequence's token mean.
- ``bnpo``: token mean over this call (local by definition; ``normalizer`` is ignored, so a caller
  accumulating k micro-batches divides by k itself).
- ``dr_grpo``: token sum / (num_sequences * max_completion_length) (Dr. GRPO: no length bias).
- ``dapo``: token sum / active tokens of the whole mini-batch (the default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from grpo_lightning._checks import check_choice
from grpo_lightning.algorithm.advantages import ADVANTAGE_ESTIMATORS, ScaleRewards
from grpo_lightning.algorithm.aggregations import AGGREGATIONS, Aggregation, LossType

ImportanceSamplingLevel = Literal["token", "sequence"]
IMPORTANCE_SAMPLING_LEVELS: tuple[str, ...] = get_args(ImportanceSamplingLevel)

#: Log-ratios (policy vs sampler, reference vs policy) are clamped to +/- this before ``exp``: a
#: policy that drifted far gives a large finite loss (e^20 ~ 5e8) instead of inf and NaN gradients.
#: Inside the range nothing changes; outside it the gradient through the clamped term is 0, which
#: the ratio clip would give anyway.
MAX_LOG_RATIO = 20.0


@dataclass(frozen=True)
class LossConfig:
    """The GRPO objective: advantage scaling, clipping, KL weight and aggregation (checked once, here)."""

    loss_type: LossType = "dapo"
    """Aggregation of the per-token loss, see the module docstring."""
    epsilon: float = 0.2
    """Lower clip: the ratio is kept >= 1 - epsilon (and <= 1 + epsilon unless ``epsilon_high`` is set)."""
    epsilon_high: float | None = None
    """Upper clip (DAPO "clip-higher"); None means ``epsilon``."""
    delta: float | None = None
    """Two-sided clipping: the unclipped ratio is capped at ``delta`` (> 1 + epsilon_high); None = off."""
    beta: float = 0.0
    """Weight of the k3 KL penalty to the reference; 0 disables it (and the reference model)."""
    importance_sampling_level: ImportanceSamplingLevel = "token"
    """``token`` ratios or one ``sequence`` ratio per completion (GSPO)."""
    max_completion_length: int | None = None
    """The generation length limit; ``dr_grpo`` divides by it."""
    top_entropy_quantile: float = 1.0
    """Keep the policy term only on this fraction of highest-entropy active tokens; 1.0 keeps all."""
    scale_rewards: ScaleRewards | bool = "group"
    """Advantage scaling (``compute_advantages``): ``group`` std, ``batch`` std, or ``none``; TRL's
    booleans too (``True`` = ``group``, ``False`` = ``none``), stored as the name."""
    mask_truncated_completions: bool = False
    """Leave completions that hit the length limit without an EOS out of the loss (the sampler masks them)."""

    def __post_init__(self) -> None:
        if isinstance(self.scale_rewards, bool):  # TRL's spelling: True = "group", False = "none"
            object.__setattr__(self, "scale_rewards", "group" if self.scale_rewards else "none")
        aggregation = AGGREGATIONS.get(self.loss_type)
        ADVANTAGE_ESTIMATORS.get(self.scale_rewards)  # raises for an unknown name, listing the valid ones
        check_choice("importance_sampling_level", self.importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
        if self.beta < 0:
            raise ValueError(f"beta={self.beta} must be >= 0 (0 = no KL penalty and no reference model).")
        if self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ValueError(f"epsilon={self.epsilon} and epsilon_high={self.epsilon_high} must be >= 0.")
        if self.delta is not None and self.delta <= 1.0 + self.clip_high:
            raise ValueError(
                f"delta={self.delta} must exceed 1 + epsilon_high = {1.0 + self.clip_high}, or be None: it caps "
                "large ratios of negative-advantage tokens and must not undercut the clip range (4 is usual)."
            )
        if not 0.0 < self.top_entropy_quantile <= 1.0:
            raise ValueError(
                f"top_entropy_quantile={self.top_entropy_quantile} must be in (0, 1]; 1.0 keeps every token."
            )
        if aggregation.needs_max_completion_length and (
            self.max_completion_length is None or self.max_completion_length < 1
        ):
            raise ValueError(
                f"loss_type={self.loss_type!r} divides by max_completion_length: pass max_completion_length "
                f"(the generation length limit, a positive int), got {self.max_completion_length!r}."
            )

    @property
    def clip_high(self) -> float:
        """The upper clip range actually used: ``epsilon_high``, else ``epsilon``."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def aggregation(self) -> Aggregation:
        """The registered implementation of ``loss_type``."""
        return AGGREGATIONS.get(self.loss_type)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values: [B, T]`` over the positions where ``mask: [B, T]`` is 1; 0 if there are none."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def importance_ratio(
    logp: Tensor, old_logp: Tensor, mask: Tensor, level: ImportanceSamplingLevel = "token"
) -> Tensor:
    """The importance ratio pi/pi_old ``[B, T]`` (the log-ratio clamped to ``+/- MAX_LOG_RATIO``).

    ``token``: ``exp(logp - old)`` per token. ``sequence`` (GSPO): the exponential of the mean
    log-ratio over the sequence's active tokens, the same value broadcast over its positions.
    """
    log_ratio = logp - old_logp
    if level == "sequence":
        mask = mask.to(log_ratio.dtype)
        seq = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
        log_ratio = seq.expand_as(logp)
    elif level != "token":
        check_choice("importance_sampling_level", level, IMPORTANCE_SAMPLING_LEVELS)
    return torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) ``[B, T]``: ``exp(ref - logp) - (ref - logp) - 1``,
    with ``ref - logp`` clamped to ``+/- MAX_LOG_RATIO``."""
    diff = (ref_logp - logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.exp(diff) - diff - 1.0


def high_entropy_mask(entropy: Tensor, mask: Tensor, top_quantile: float) -> Tensor:
    """Bool ``[B, T]``: active tokens whose entropy is in the top ``top_quantile`` fraction.

    The threshold is the ``1 - top_quantile`` quantile of the entropies of the active tokens *of
    this call* (a micro-batch on one rank): computing it over the whole mini-batch would need the
    entropies of every micro-batch before the first backward. Ties at the threshold are kept.
    """
    active = mask.bool()
    # torch.quantile needs float32/float64; compare in the same dtype so the threshold token is kept.
    entropy = entropy.detach()
    entropy = entropy if entropy.dtype in (torch.float32, torch.float64) else entropy.float()
    values = entropy[active]  # boolean indexing: one host sync
    if values.numel() == 0:
        return torch.zeros_like(active)
    threshold = torch.quantile(values, 1.0 - top_quantile)
    return (entropy >= threshold) & active


def _check_shapes(logp: Tensor, advantages: Tensor, **tensors: Tensor | None) -> None:
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}.")
    for name, t in tensors.items():
        if t is not None and t.shape != logp.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but logp has {tuple(logp.shape)}; they must match."
            )
    if advantages.shape != logp.shape[:1]:
        raise ValueError(
            f"advantages must be [B] = [{logp.shape[0]}] (one per completion), got {tuple(advantages.shape)}."
        )


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    config: LossConfig = LossConfig(),
    *,
    normalizer: Tensor | float | None = None,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss of one (micro-)batch and its detached metrics.

    Args:
        logp: [B, T] log-probs of the completion tokens under the policy (carries the gradient).
        old_logp: [B, T] under the sampling policy; None means on-policy (``logp.detach()``).
        ref_logp: [B, T] under the reference; needed only when ``config.beta > 0``.
        advantages: [B] one advantage per completion.
        mask: [B, T] 1 on completion tokens that count, 0 on padding and after EOS.
        config: the objective's settings (aggregation, clip ranges, KL weight, ...), checked when built.
        normalizer: the mini-batch total of ``config.aggregation.count``; None = this call's count.
        entropy: [B, T] per-token entropy; required when ``config.top_entropy_quantile < 1`` (the
            threshold is local to this call, see :func:`high_entropy_mask`).

    Returns:
        ``(loss, metrics)``: a scalar, and detached means over this call's active tokens:
        ``ratio_mean``, ``clip_ratio/low_mean`` (ratio < 1 - epsilon and A < 0),
        ``clip_ratio/high_mean`` (ratio > 1 + epsilon_high and A > 0), ``clip_ratio/region_mean``
        (either), and ``kl`` when ``beta > 0``.
    """
    epsilon, epsilon_high, delta, beta = config.epsilon, config.clip_high, config.delta, config.beta
    top_entropy_quantile = config.top_entropy_quantile
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (reference log-probs); pass them or set beta=0.")
    if top_entropy_quantile < 1.0 and entropy is None:
        raise ValueError("top_entropy_quantile < 1 needs the per-token entropy [B, T]; pass entropy=.")
    _check_shapes(logp, advantages, old_logp=old_logp, ref_logp=ref_logp, mask=mask, entropy=entropy)

    old_logp = logp.detach() if old_logp is None else old_logp
    # Positions outside the mask may hold anything (a pad token's log-prob, -inf): zero them before any
    # exp, so neither the loss nor its gradient can pick up inf * 0 = NaN from them.
    active = mask.bool()
    logp = torch.where(active, logp, torch.zeros_like(logp))
    old_logp = torch.where(active, old_logp, torch.zeros_like(old_logp))
    if ref_logp is not None:
        ref_logp = torch.where(active, ref_logp, torch.zeros_like(ref_logp))
    mask = active.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(-1)  # [B, 1], broadcast over tokens

    ratio = importance_ratio(logp, old_logp, mask, config.importance_sampling_level)
    clipped = ratio.clamp(1.0 - epsilon, 1.0 + epsilon_high)
    unclipped = ratio if delta is None else ratio.clamp(max=delta)
    per_token = -torch.min(unclipped * adv, clipped * adv)
    if top_entropy_quantile < 1.0:
        assert entropy is not None  # checked above
        # Only the policy term is masked (the KL still acts on every token); the normaliser is unchanged.
        per_token = per_token * high_entropy_mask(entropy, mask, top_entropy_quantile).to(per_token.dtype)

    metrics: dict[str, Tensor] = {}
    if beta > 0.0:
        assert ref_logp is not None  # checked above
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl.detach(), mask)

    loss = config.aggregation.aggregate(per_token, mask, normalizer, config.max_completion_length)

    with torch.no_grad():
        low = (ratio < 1.0 - epsilon) & (adv < 0)
        high = (ratio > 1.0 + epsilon_high) & (adv > 0)
        metrics["ratio_mean"] = masked_mean(ratio, mask)
        metrics["clip_ratio/low_mean"] = masked_mean(low.to(mask.dtype), mask)
        metrics["clip_ratio/high_mean"] = masked_mean(high.to(mask.dtype), mask)
        metrics["clip_ratio/region_mean"] = masked_mean((low | high).to(mask.dtype), mask)
    return loss, metrics
