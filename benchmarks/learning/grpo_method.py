"""GRPO as the config runs it: the config's GRPOModule in a Lightning Trainer, stopped by the budget."""

from __future__ import annotations

from typing import Any

from budget import BudgetClock
from learning_task import Task
from lightning.pytorch import Callback, LightningModule, Trainer
from sft_methods import Counters


class BudgetStop(Callback):
    """Starts ``clock`` when training starts, ticks it after every training step (a rollout and its
    optimizer steps) and stops the Trainer once the budget is spent."""

    def __init__(self, clock: BudgetClock, completions_per_step: int) -> None:
        self.clock = clock
        self.completions_per_step = completions_per_step
        self.counters = Counters()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.clock.start()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.counters.steps = trainer.global_step
        self.counters.samples += self.completions_per_step
        if self.clock.tick(self.counters.steps, self.counters.samples):
            trainer.should_stop = True


def grpo(task: Task, clock: BudgetClock, scratch_dir: str) -> Counters:
    """Fit the config's module on the config's training data until the budget is spent.

    ``scratch_dir`` is the Trainer's root folder (nothing is written there unless a run fails).
    """
    module = task.module
    per_step = task.datamodule.hparams.batch_size * module.hparams.num_generations
    stop = BudgetStop(clock, per_step)
    kwargs = {**task.trainer_kwargs, "callbacks": [stop], "default_root_dir": scratch_dir}
    trainer = Trainer(**kwargs)
    trainer.fit(module, datamodule=task.datamodule)
    if not clock.done:
        raise RuntimeError(
            f"GRPO stopped after {trainer.global_step} steps before the budget was spent (the training data ran "
            "out?): give the config more training problems or a smaller budget."
        )
    return stop.counters
