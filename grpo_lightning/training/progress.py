"""Progress bars that count optimizer steps, as ``max_steps`` and ``trainer.global_step`` do.

A GRPO training step (one rollout) makes ``num_iterations * steps_per_rollout`` optimizer steps,
but Lightning's bars count training steps: a finished run would end at ``1/2``. GRPOModule swaps
Lightning's default bar for its twin here (``configure_callbacks``), or, when standard output is
not a terminal (a log file, ``nohup``, SLURM), for the line report of
:mod:`grpo_lightning.training.log_progress`; a custom bar is left alone, and no bar stays no bar.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from grpo_lightning.lightning_compat import TrainDescriptionHook, progress_bar_arguments
from grpo_lightning.training.log_progress import LogProgress, interactive_output
from grpo_lightning.training.settings import optimizer_steps_per_batch


class StepProgressBarMixin(TrainDescriptionHook):
    """Makes Lightning's progress bars count optimizer steps (``trainer.global_step``), as
    ``max_steps`` does, instead of training steps: a GRPO training step makes
    ``num_iterations * steps_per_rollout`` optimizer steps.

    The bar of each epoch runs from 0 to the optimizer steps that epoch can make (capped by what
    ``max_steps`` leaves), and the description leaves out the epoch limit when there is none.
    """

    _epoch_start_step = 0

    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer  # type: ignore[attr-defined]
        total = trainer.num_training_batches * optimizer_steps_per_batch(trainer.lightning_module)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            total = min(total, trainer.max_steps - self._epoch_start_step)
        return total

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start_step = trainer.global_step
        super().on_train_epoch_start(trainer, pl_module)  # type: ignore[misc]

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The parent bars show batch_idx + 1: hand them the optimizer steps done in this epoch instead.
        done = trainer.global_step - self._epoch_start_step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, done - 1)  # type: ignore[misc]

    def epoch_label(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is None or self.trainer.max_epochs < 0:  # type: ignore[attr-defined]
            return f"Epoch {current_epoch}"
        return super().epoch_label(current_epoch)

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        if "v_num" in items:
            items["v_num"] = str(items["v_num"])  # a version, not a quantity to print as 0.000
        return items


class StepTQDMProgressBar(StepProgressBarMixin, TQDMProgressBar):
    """:class:`TQDMProgressBar` counting optimizer steps (see :class:`StepProgressBarMixin`)."""


class StepRichProgressBar(StepProgressBarMixin, RichProgressBar):
    """:class:`RichProgressBar` counting optimizer steps (see :class:`StepProgressBarMixin`)."""


def module_progress(bar: Callback | None, interactive: bool | None = None) -> Callback | None:
    """What replaces Lightning's default progress bar ``bar``: its optimizer-step twin on a terminal
    or in a notebook, :class:`LogProgress` lines when the output is not interactive (``interactive``,
    default: :func:`interactive_output`); None when ``bar`` is absent (``enable_progress_bar=False``),
    disabled (``refresh_rate=0``) or a custom class: then it stays as the user made it."""
    twin = step_progress_bar(bar)
    if twin is None or getattr(bar, "is_disabled", False):
        return twin
    return twin if (interactive_output() if interactive is None else interactive) else LogProgress()


def step_progress_bar(bar: Callback | None) -> Callback | None:
    """The optimizer-step-counting twin of Lightning's default progress bar ``bar`` (same settings),
    or None when ``bar`` is absent or a custom class (then it is left as the user made it)."""
    if type(bar) is TQDMProgressBar:
        twin: Callback = StepTQDMProgressBar(**progress_bar_arguments(bar))
        return twin
    if type(bar) is RichProgressBar:
        return StepRichProgressBar(**progress_bar_arguments(bar))
    return None
