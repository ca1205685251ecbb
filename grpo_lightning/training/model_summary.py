"""Lightning's model summary without its FLOPs: Lightning counts them only for a module with an
``example_input_array``, which a GRPO module has no use for, so its FLOPs column and "Total FLOPs"
line are always 0 here."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary

from grpo_lightning.lightning_compat import summary_max_depth, summary_table

log = logging.getLogger("lightning.pytorch.callbacks.model_summary")


class SummaryWithoutZeroFlops(ModelSummary):
    """The plain-text summary, minus the FLOPs column and total when no FLOPs were counted."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops:
            ModelSummary.summarize(
                summary_data, total_parameters, trainable_parameters, model_size, total_training_modes, total_flops
            )
            return
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, 0, *columns
        )
        log.info("\n" + table.rsplit("\n", 1)[0])  # the last line is "0  Total Flops"


def swap_default_summary(trainer: Trainer) -> None:
    """Replace Lightning's own summary (the default of ``enable_model_summary``, or one configured by
    name) with the twin, as plain text; a subclass of the user's is left alone."""
    for i, callback in enumerate(trainer.callbacks):
        if type(callback) in (ModelSummary, RichModelSummary):
            trainer.callbacks[i] = SummaryWithoutZeroFlops(max_depth=summary_max_depth(callback))
