"""What the command line says about a run's checkpoints: a warning at the start when a
``ModelCheckpoint`` monitors a metric that the run can never log (no validation data), and the
true reason in the end report when no best or last checkpoint was saved.

:class:`RunWatch` also records whether any step ran, so that a run that failed before its first
step can take its empty run folder back (:func:`~grpo_lightning.run.folders.remove_unused_run_folder`).
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn


def no_validation_reason(trainer: Trainer) -> str | None:
    """Why this fit runs no validation at all (None when it has validation data): the data module
    has no validation split, or ``limit_val_batches`` is 0. Known once the data module is set up."""
    if trainer.limit_val_batches == 0:
        return "limit_val_batches=0"
    data = trainer.datamodule
    if data is not None and hasattr(data, "val_dataset"):
        val = data.val_dataset
        if val is None or len(val) == 0:
            return "the data has no validation split"
    return None


def _monitoring(trainer: Trainer) -> list[ModelCheckpoint]:
    return [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor]


class RunWatch(Callback):
    """Watches a run for the command line's reports: whether any step (training, validation,
    test, predict, sanity check) ran and whether validation ran; at the start of a fit, warns once
    about each ``ModelCheckpoint`` that monitors a metric while the run has no validation data."""

    def __init__(self) -> None:
        self.stepped = False
        self.validated = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.stepped = self.validated = False
        if stage != "fit":
            return
        reason = no_validation_reason(trainer)
        if reason is None:
            return
        for callback in _monitoring(trainer):
            monitor = callback.monitor
            rank_zero_warn(
                f"ModelCheckpoint(monitor={monitor!r}) will save no checkpoint in this run: {monitor} is a "
                f"validation metric, and this run has no validation ({reason}). Give the data a validation "
                "split (e.g. data.synthetic val_size, data.val_fraction, data.val_dataset), or drop that "
                "ModelCheckpoint (a ModelCheckpoint with save_last=true keeps the latest weights)."
            )
            # Lightning's own warning for this blames the module for not logging the metric.
            warnings.filterwarnings(
                "ignore", message=re.escape(f"`ModelCheckpoint(monitor={monitor!r})` could not find")
            )

    def _step(self, trainer: Trainer, *_: Any) -> None:
        self.stepped = True

    on_train_batch_start = on_test_batch_start = on_predict_batch_start = _step

    def on_validation_batch_start(self, trainer: Trainer, *_: Any) -> None:
        self.stepped = True
        self.validated = self.validated or not trainer.sanity_checking


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)


def checkpoint_lines(trainer: Trainer, watch: RunWatch | None, run_folder: str | None = None) -> dict[str, str]:
    """The end report's ``best checkpoint`` and ``last checkpoint`` entries (none without a
    ModelCheckpoint), each a path or ``(none: <the reason>)``.

    A resumed run restores the best path of the run it resumed; until this run validates better, that
    file (outside ``run_folder``) is still the best, and the line says where it came from."""
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    if not callbacks:
        return {}
    best = next((c.best_model_path for c in callbacks if c.best_model_path), "")
    if best and run_folder is not None and not _inside(best, run_folder):
        best = f"{best} (from the run this one resumed: this run saved no better one)"
    last = next((c.last_model_path for c in callbacks if c.last_model_path), "")
    if not best:
        monitored = _monitoring(trainer)
        if not monitored:
            kept = any(c.save_top_k != 0 for c in callbacks)
            best = "(none saved)" if kept else "(none: every ModelCheckpoint has save_top_k=0)"
        else:
            key = monitored[0].monitor
            reason = no_validation_reason(trainer)
            if reason is not None:
                why = f"this run had no validation ({reason})"
            elif watch is not None and not watch.validated:
                why = "validation never ran before training ended (see val_check_interval)"
            elif key not in trainer.callback_metrics:
                why = f"{key} was never logged"
            else:
                why = "none was saved"
            best = f"(none: ModelCheckpoint monitors {key}, but {why})"
    if not last:
        keeps_last = any(c.save_last for c in callbacks)
        last = "(none)" if keeps_last else "(none: no ModelCheckpoint has save_last=true)"
    return {"best checkpoint": best, "last checkpoint": last}
