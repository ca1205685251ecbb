"""Validation and test: greedy pass@1, sampled pass@k, reward and length, as torchmetrics.

The metrics are ``MeanMetric`` objects logged with ``on_epoch=True``, so Lightning reduces them
over every batch and every device before they reach the loggers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from grpo_lightning.scoring import ScoredRollout, sample_and_score
from grpo_lightning.seeds import SeedStream, stream_seed

if TYPE_CHECKING:
    from grpo_lightning.module import GRPOModule


class EvalMetrics(nn.Module):
    """The running means of one evaluation loop (validation or test)."""

    def __init__(self, num_samples: int) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.accuracy = MeanMetric()
        # A reward of None (NaN) means "not applicable": leave it out of the mean.
        self.reward = MeanMetric(nan_strategy="ignore")
        self.mean_length = MeanMetric()
        self.pass_at_k = MeanMetric() if num_samples > 1 else None

    def reset(self) -> None:
        """Fresh states, made under the grad mode of the loop about to run: a stand-alone
        ``validate`` runs under inference mode, validation inside ``fit`` under no_grad, and states
        left by the one cannot be updated in place by the other."""
        for metric in (self.accuracy, self.reward, self.mean_length, self.pass_at_k):
            if metric is not None:
                metric.reset()


def correct(module: GRPOModule, scored: ScoredRollout) -> Tensor:
    """``[N]`` bool: the accuracy reward of each completion is >= ``accuracy_threshold`` (NaN: wrong)."""
    scorer = module.accuracy_scorer
    fn = scorer.funcs[0]
    if scored.per_func.shape[1] == len(module.scorer) and fn in module.scorer.funcs:
        values = scored.per_func[:, module.scorer.funcs.index(fn)]  # already computed
    else:
        values = scorer.score(scored.prompts, scored.completions, scored.columns)[:, 0]
    return values >= module.hparams.accuracy_threshold  # NaN compares False


@torch.no_grad()
def evaluate(
    module: GRPOModule, batch: dict[str, Any], batch_idx: int, metrics: EvalMetrics, stage: str
) -> None:
    """Score greedy completions (and ``num_samples`` sampled ones for pass@k) of one batch; log the means."""
    h = module.hparams
    # Seeds depend on the batch, not on training progress: the same prompts get the same samples.
    base, rank = module.base_seed(), module.global_rank
    seed = stream_seed(base, rank, batch_idx, SeedStream.EVALUATION)
    greedy = sample_and_score(
        module, batch, num_generations=1, sampling=module.greedy, seed=seed, scorer=module.scorer
    )
    metrics.accuracy.update(correct(module, greedy).float())
    metrics.reward.update(greedy.total)
    metrics.mean_length.update(greedy.rollout.lengths.float())
    size = len(greedy.total)
    if module.trainer.state.fn == "fit":
        # Logged at the optimizer step the evaluation follows (Lightning's default counts rollouts).
        # Only while fitting: a stand-alone validate/test would print it among its results.
        module.log("step", float(module.trainer.global_step), on_step=False, on_epoch=True, batch_size=size)
    module.log(f"{stage}/accuracy", metrics.accuracy, on_epoch=True, prog_bar=True, batch_size=size)
    module.log(f"{stage}/reward", metrics.reward, on_epoch=True, batch_size=size)
    module.log(f"{stage}/completions/mean_length", metrics.mean_length, on_epoch=True, batch_size=size)
    if metrics.pass_at_k is not None:
        k = metrics.num_samples
        sampled = sample_and_score(
            module,
            batch,
            num_generations=k,
            sampling=module.sampling,
            seed=stream_seed(base, rank, batch_idx, SeedStream.EVALUATION_SAMPLES),
            scorer=module.accuracy_scorer,
        )
        solved = (sampled.per_func[:, 0] >= h.accuracy_threshold).view(-1, k).any(dim=1)
        metrics.pass_at_k.update(solved.float())
        module.log(f"{stage}/pass@{k}", metrics.pass_at_k, on_epoch=True, batch_size=size)


def log_sanity_check(module: GRPOModule, metrics: EvalMetrics, stage: str = "val") -> dict[str, float]:
    """Send the sanity check's validation metrics to the loggers at the current step.

    Lightning computes the sanity check (``num_sanity_val_steps``) and then drops its metrics. Run
    on the whole validation set (``num_sanity_val_steps=-1``) it is the accuracy before any update,
    the first point of every curve, so it is logged here (and printed on rank 0). ``compute``
    synchronises the metrics across devices: every rank must call this.
    """
    named = {
        "accuracy": metrics.accuracy,
        "reward": metrics.reward,
        "completions/mean_length": metrics.mean_length,
    }
    if metrics.pass_at_k is not None:
        named[f"pass@{metrics.num_samples}"] = metrics.pass_at_k
    values = {
        f"{stage}/{name}": float(metric.compute()) for name, metric in named.items() if metric.update_count
    }
    if not values:
        return values
    trainer = module.trainer
    sanity, full = trainer.num_sanity_val_batches, trainer.num_val_batches
    if list(sanity) != list(full):
        # A part of the validation set is not the accuracy before training: say so, log nothing.
        if trainer.is_global_zero:
            print(
                f"Sanity check on {sum(sanity)} of {sum(full)} validation batches (not logged as the "
                "accuracy before training; num_sanity_val_steps: -1 measures the whole set).",
                flush=True,
            )
        return {}
    step = module.trainer.global_step
    for logger in module.loggers:
        logger.log_metrics(values, step=step)
    if module.trainer.is_global_zero:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        print(f"Validation before training (step {step}): {shown}", flush=True)
    return values
