"""Steps without a learning signal leave the weights exactly as they are.

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
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor


def has_signal(advantages: Tensor) -> bool:
    """True when any advantage ``[N]`` (gathered over every rank, so all ranks agree) is non-zero."""
    return bool(advantages.ne(0).any())


def skip_update(module: LightningModule, num_steps: int, refill_rounds: int = 0) -> dict[str, Tensor]:
    """Count ``num_steps`` optimizer steps of ``module``'s optimizer without touching the weights or
    its state; ``refill_rounds``: the dynamic-sampling rounds that found no signal either (for the warning).

    Lightning counts an optimizer step in the hooks around ``LightningOptimizer.step``; calling them
    alone keeps ``global_step`` right without running the optimizer (whose moments and weight decay
    would move the weights even with zero gradients) or the precision plugin (a gradient scaler
    refuses a step without a backward pass). The LR scheduler steps as usual.
    Returns the step's loss metrics: loss and grad_norm 0, and the learning rate.
    """
    rank_zero_warn(
        "Every group of a training step scored equal rewards"
        + (f", even after {refill_rounds} dynamic-sampling refill rounds" if refill_rounds else "")
        + ": no learning signal, so the step left the weights unchanged (logged as train/skipped_zero_advantage). "
        "If this repeats, the reward cannot tell the completions apart: check it on a few completions, or the "
        "task is too easy or too hard for the model.",
    )
    opt, sched = module.optimizers(), module.lr_schedulers()
    lr = opt.param_groups[0]["lr"]
    for _ in range(num_steps):
        opt._on_before_step()
        opt._on_after_step()
        if sched is not None:
            sched.step()
    zero = torch.zeros((), device=module.device)
    return {"loss": zero, "grad_norm": zero.clone(), "lr": torch.tensor(lr)}
