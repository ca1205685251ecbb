"""Validation and test: greedy accuracy, and from ``val_num_samples`` (N) sampled completions per
prompt mean@N, unbiased pass@k and maj@k (:mod:`grpo_lightning.evaluation.metrics`); figures per source when
the rows carry a ``source`` column.

Every figure is a torchmetrics ``MeanMetric`` over problems, logged with ``on_epoch=True``, so
Lightning reduces it over every batch and every device before it reaches the loggers. Names
(``val/`` or ``test/`` first):

- ``accuracy``: greedy completions scored correct by the accuracy reward; ``reward``,
  ``completions/mean_length``: the greedy completions' total reward and length.
- with N > 1: ``mean@N`` (share of the N samples that are correct), ``pass@k`` and ``maj@k`` for
  the k of :func:`~grpo_lightning.evaluation.metrics.report_ks` (every k up to 16 samples). maj@k votes with the
  answers the accuracy reward extracts (its ``extract_answer`` method; a reward without one gets
  no maj@k, with a warning).
- with a ``source`` column: ``<source>/accuracy`` and, with N > 1, ``<source>/mean@N``,
  ``<source>/pass@N``, ``<source>/maj@N``.

:class:`~grpo_lightning.evaluation.evaluator.Evaluator` samples and judges a batch; this module
keeps the running means and logs them through the Lightning module (``module`` below).
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric

from grpo_lightning.evaluation.evaluator import BatchEvaluation, Evaluator, source_figures
from grpo_lightning.evaluation.metrics import report_ks


class EvalMetrics(nn.Module):
    """The running means of one evaluation loop (validation or test), created as first logged."""

    def __init__(self, num_samples: int) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.ks = report_ks(num_samples) if num_samples > 1 else []
        # A reward of None (NaN) means "not applicable": leave it out of the mean.
        self.reward = MeanMetric(nan_strategy="ignore")
        self.mean_length = MeanMetric()
        # Names are not module attribute names (they hold "@", "/" and any source's name): a list and an index.
        self.figures = nn.ModuleList()
        self._index: dict[str, int] = {}
        self._logged: list[str] = []  # in the order first logged in this loop, the same on every device
        self._attribute: str | None = None

    def figure(self, name: str, device: torch.device) -> MeanMetric:
        """The mean of figure ``name`` (``accuracy``, ``pass@4``, ``<source>/accuracy``, ...), made on first use."""
        if name not in self._index:
            self._index[name] = len(self.figures)
            self.figures.append(MeanMetric().to(device))
        return self.figures[self._index[name]]

    def index(self, name: str) -> int:
        return self._index[name]

    def attribute_name(self, module: nn.Module) -> str:
        """This object's attribute name in ``module`` (``val_metrics``, say)."""
        if self._attribute is None:
            self._attribute = next((n for n, m in module.named_children() if m is self), None)
            if self._attribute is None:
                raise ValueError("These EvalMetrics are not an attribute of the module that logs them.")
        return self._attribute

    def logged(self) -> dict[str, MeanMetric]:
        """Every metric logged in this loop, by name (without the stage), in the order first logged."""
        named = {"reward": self.reward, "completions/mean_length": self.mean_length}
        return {
            name: named[name] if name in named else self.figures[self._index[name]] for name in self._logged
        }

    def mark_logged(self, name: str) -> None:
        if name not in self._logged:
            self._logged.append(name)

    def reset(self) -> None:
        """Fresh states, made under the grad mode of the loop about to run: a stand-alone
        ``validate`` runs under inference mode, validation inside ``fit`` under no_grad, and states
        left by the one cannot be updated in place by the other."""
        for metric in (self.reward, self.mean_length, *self.figures):
            metric.reset()
        self._logged = []


def log_evaluation(
    module: LightningModule, evaluator: Evaluator, result: BatchEvaluation, metrics: EvalMetrics, stage: str
) -> None:
    """Update the running means with one batch's evaluation (see :meth:`Evaluator.evaluate`) and log them."""
    size = len(result.greedy.total)
    if module.trainer.state.fn == "fit":
        # Logged at the optimizer step the evaluation follows (Lightning's default counts rollouts).
        # Only while fitting: a stand-alone validate/test would print it among its results.
        module.log("step", float(module.trainer.global_step), on_step=False, on_epoch=True, batch_size=size)
    figures = result.figures(metrics.ks)
    for name, values in figures.items():
        _log(module, metrics, stage, name, values, size)
    metrics.reward.update(result.greedy.total)
    metrics.mean_length.update(result.greedy.rollout.lengths.float())
    for name, metric in (("reward", metrics.reward), ("completions/mean_length", metrics.mean_length)):
        module.log(f"{stage}/{name}", metric, on_epoch=True, batch_size=size)
        metrics.mark_logged(name)
    if result.sources is not None:
        rows_of = {s: [i for i, r in enumerate(result.sources) if r == s] for s in set(result.sources)}
        for source in evaluator.all_sources(result.sources):
            rows = torch.tensor(rows_of.get(source, []), dtype=torch.long)
            for name in source_figures(figures, metrics.num_samples):
                _log(module, metrics, stage, f"{source}/{name}", figures[name][rows], size)


def _log(
    module: LightningModule, metrics: EvalMetrics, stage: str, name: str, values: Tensor, size: int
) -> None:
    """Add ``values`` ([rows], possibly none on this device) to figure ``name`` and log it."""
    metric = metrics.figure(name, module.device)
    if len(values):
        metric.update(values.to(device=module.device, dtype=torch.float32))
    # Lightning finds a logged metric's attribute name in a table it builds once, before this one
    # may have existed: name it.
    module.log(
        f"{stage}/{name}",
        metric,
        on_epoch=True,
        prog_bar=name == "accuracy",
        batch_size=size,
        metric_attribute=f"{metrics.attribute_name(module)}.figures.{metrics.index(name)}",
    )
    metrics.mark_logged(name)


def log_sanity_check(module: LightningModule, metrics: EvalMetrics, stage: str = "val") -> dict[str, float]:
    """Send the sanity check's validation metrics to the loggers at the current step.

    Lightning computes the sanity check (``num_sanity_val_steps``) and then drops its metrics. Run
    on the whole validation set (``num_sanity_val_steps=-1``) it is the accuracy before any update,
    the first point of every curve, so it is logged here (and printed on rank 0). ``compute``
    synchronises the metrics across devices: every rank must call this (each logged the same names).
    """
    values = {f"{stage}/{name}": float(metric.compute()) for name, metric in metrics.logged().items()}
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
        # The whole curve is in the logs; the printout keeps pass@k and maj@k at k = N only.
        n = metrics.num_samples
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if "@" not in k or k.endswith(f"@{n}"))
        print(f"Validation before training (step {step}): {shown}", flush=True)
    return values
