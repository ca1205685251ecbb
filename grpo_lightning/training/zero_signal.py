"""Steps without a learning signal leave the weights exactly as they are, and say why.

When every group of a step has zero spread (all of a prompt's completions scored the same), every
advantage is 0 and the policy term of the loss vanishes. Such a step makes no forward pass, no
backward pass and no optimizer update; it still counts its optimizer steps (``global_step``, the LR
schedule, checkpoint cadence), so a run's length does not change.

With ``beta > 0`` this is a choice, and a departure from TRL, which still applies the KL term on
such steps. Early in a run that term is ~1e-9 and AdamW normalises it into learning-rate-sized
steps, so the weights would drift on float noise with nothing learned. Later, once the policy has
moved, it is a real pull towards the reference, and this skip drops it on those steps (and only
those: every step with any reward signal applies the KL as usual). The skipped steps are logged as
``train/skipped_zero_advantage``.

The warning of a skipped step names the cause that the gathered rollout shows
(:func:`no_signal_cause`): completions cut off at ``max_completion_length``, rewards that never
applied, rewards that were all equal (and their value), or rewards too close to give an advantage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from grpo_lightning.algorithm.advantages import zero_spread
from grpo_lightning.training.stepping import OptimizerStepping

#: The most distinct reward values a warning lists.
_SHOWN_VALUES = 5


def has_signal(advantages: Tensor) -> bool:
    """True when any advantage ``[N]`` (gathered over every rank, so all ranks agree) is non-zero."""
    return bool(advantages.ne(0).any())


def _values(x: Tensor) -> str:
    """The distinct values of ``x`` (1-D, no NaN), the first few of them, as text."""
    distinct = torch.unique(x).tolist()
    shown = ", ".join(f"{v:g}" for v in distinct[:_SHOWN_VALUES])
    return shown + (f", ... ({len(distinct)} values)" if len(distinct) > _SHOWN_VALUES else "")


def _per_reward(per_func: Tensor, names: Sequence[str]) -> str:
    """What each reward function of ``per_func: [M, K]`` gave, e.g. ``'accuracy': 0 everywhere``."""
    parts = []
    for k, name in enumerate(names):
        column = per_func[:, k]
        valid = column[~column.isnan()]
        if not valid.numel():
            seen = "None everywhere"
        elif bool((valid == valid[0]).all()):
            seen = f"{float(valid[0]):g} everywhere"
        else:
            seen = _values(valid)
        parts.append(f"{name!r}: {seen}")
    return "; ".join(parts)


def _largest_spread(total: Tensor, num_generations: int) -> float:
    """The largest max - min of the valid rewards of one prompt in ``total: [M]``."""
    groups = total.view(-1, num_generations).double()
    valid = ~groups.isnan()
    high = torch.where(valid, groups, float("-inf")).amax(dim=1)
    low = torch.where(valid, groups, float("inf")).amin(dim=1)
    return float(torch.where(valid.sum(dim=1) >= 2, high - low, 0.0).amax())


def no_signal_cause(
    gathered: Mapping[str, Tensor],
    reward_names: Sequence[str],
    num_generations: int,
    max_completion_length: int,
) -> tuple[str, str]:
    """Why a step's advantages are all 0, and what to do: ``(cause, fix)``, one sentence each.

    ``gathered`` holds the step's global ``total: [M]``, ``per_func: [M, K]`` (NaN = not applicable)
    and ``truncated: [M]`` (1 for a completion cut off at ``max_completion_length`` without EOS), as
    :func:`~grpo_lightning.training.rollout_stats.global_advantages` returns them; M rows, G per prompt.
    """
    total, per_func = gathered["total"].cpu(), gathered["per_func"].cpu()
    truncated = gathered["truncated"].cpu().bool()
    valid = ~total.isnan()
    groups_valid = valid.view(-1, num_generations).sum(dim=1)
    if not bool(valid.any()):
        cause = (
            "no reward applied to any completion (every reward function returned None or NaN for all of them)"
        )
        fix = "Check the columns the rewards need (e.g. 'answer') and the format they expect of a completion."
    elif num_generations < 2:
        cause = "num_generations=1: a single completion per prompt has nothing to be compared with"
        fix = "Set num_generations to 2 or more (GRPO compares the completions of one prompt)."
    elif bool((groups_valid < 2).all()):
        cause = (
            "no prompt has two completions with a reward (the reward functions returned None or NaN for the "
            f"others: {int((~valid).sum())} of {len(total)})"
        )
        fix = "Check the columns the rewards need (e.g. 'answer') and the format they expect of a completion."
    elif bool(zero_spread(total, num_generations).all()):
        scores = total[valid]
        if bool((scores == scores[0]).all()):
            each = _per_reward(per_func, reward_names)
            cause = f"every completion scored the same total reward, {float(scores[0]):g} ({each})"
        else:
            cause = (
                f"the completions of each prompt scored equal rewards (totals per prompt: {_values(scores)})"
            )
        fix = (
            "The reward cannot tell these completions apart: check it on a few completions, or the task is "
            "too easy or too hard for the model."
        )
    else:
        cause = (
            "the rewards differ, but too little for a non-zero advantage (largest spread within a prompt: "
            f"{_largest_spread(total, num_generations):.3g})"
        )
        fix = "Rescale the rewards (multiply them by a constant)."
    cut, max_length = int(truncated.sum()), max_completion_length
    if cut == len(truncated):
        cause += (
            f"; every completion was cut off at max_completion_length={max_length} tokens, before it ended"
        )
        fix = f"Raise max_completion_length (now {max_length}) so that completions can end. {fix}"
    elif 2 * cut >= len(truncated):
        cause += f"; {cut} of {len(truncated)} completions were cut off at max_completion_length={max_length}"
    return cause, fix


def skip_update(
    stepping: OptimizerStepping,
    num_steps: int,
    gathered: Mapping[str, Tensor],
    reward_names: Sequence[str],
    num_generations: int,
    max_completion_length: int,
    refill_rounds: int = 0,
) -> dict[str, Tensor]:
    """Count ``num_steps`` optimizer steps of ``stepping`` without touching the weights or the
    optimizer's state (:meth:`OptimizerStepping.skip_step`), and warn with the cause that ``gathered``
    (see :func:`no_signal_cause`) shows; ``refill_rounds``: the dynamic-sampling rounds that found no
    signal either. The LR scheduler steps as usual.
    Returns the step's loss metrics: loss and grad_norm 0, and the learning rate.
    """
    cause, fix = no_signal_cause(gathered, reward_names, num_generations, max_completion_length)
    rank_zero_warn(
        "A training step had no learning signal"
        + (f", even after {refill_rounds} dynamic-sampling refill rounds" if refill_rounds else "")
        + f": {cause}. The weights were left unchanged (the step is logged as "
        f"train/skipped_zero_advantage). {fix}",
    )
    lr = stepping.optimizer().param_groups[0]["lr"]
    for _ in range(num_steps):
        stepping.skip_step()
    zero = torch.zeros((), device=gathered["total"].device)  # the collectives' device
    return {"loss": zero, "grad_norm": zero.clone(), "lr": torch.tensor(lr)}
