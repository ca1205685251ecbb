"""The task every method shares, read from a training config: the start checkpoint, the training
problems (answers only) and the held-out problems GRPO validates on.

The config is parsed by the project's own command line (``grpo_lightning.cli.app.main(run=False)``), so
the module and the data module are exactly those ``grpo-lightning fit --config ...`` builds, with the
same defaults, links and checks.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from grpo_lightning.data import PromptDataModule
from grpo_lightning.data.prompts import PromptFormatter
from grpo_lightning.module import GRPOModule

#: Trainer settings the benchmark replaces: its own clock stops GRPO, nothing is logged or saved,
#: no validation runs during training (every method is evaluated afterwards on the same snapshots).
TRAINER_OVERRIDES: dict[str, Any] = {
    "logger": False,
    "callbacks": None,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "limit_val_batches": 0,
    "num_sanity_val_steps": 0,
    "max_steps": 10**9,
    "max_epochs": None,
    "max_time": None,
}


@dataclass
class Task:
    """What one run starts from."""

    module: GRPOModule
    """The config's GRPOModule, its policy loaded (the start checkpoint)."""
    datamodule: PromptDataModule
    train: Dataset
    """The config's training split (``question``, ``answer``, ``prompt``, ``input_ids``, ...)."""
    held_out: Dataset
    """The config's validation split: what GRPO validates on."""
    trainer_kwargs: dict[str, Any]
    """The config's Trainer settings with :data:`TRAINER_OVERRIDES` applied."""

    def formatter(self) -> PromptFormatter:
        """Turns a ``{"question": ...}`` row into the prompt text the data module would make."""
        h = self.datamodule.hparams
        return PromptFormatter(
            self.module.tokenizer,
            h.prompt_template,
            h.system_prompt,
            h.use_chat_template,
            h.chat_template_kwargs,
        )


def load_task(config: str, overrides: Sequence[str] = ()) -> Task:
    """Parse ``config`` (plus ``overrides`` such as ``data.max_val_samples=10``) with the project's CLI.

    Raises:
        ValueError: an override is not ``key=value``, or the config has no held-out problems.
    """
    from unittest import mock

    from grpo_lightning.cli.app import main

    args = ["--config", config, "--trainer.logger=false"]
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: write key=value, e.g. data.max_val_samples=50.")
        args.append(f"--{key}={value}")
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the worker's own options are not the CLI's
        cli = main(args, run=False)
    module, datamodule = cli.model, cli.datamodule
    module.configure_model()
    held_out = datamodule.get_split("val")
    if held_out is None:
        raise ValueError(
            f"{config} has no validation problems: the comparison evaluates every method on them. Give the "
            "data section a validation split (synthetic: val_size > 0)."
        )
    trainer_kwargs = cli.config["trainer"].as_dict()
    trainer_kwargs.update(TRAINER_OVERRIDES)
    return Task(module, datamodule, datamodule.get_split("train"), held_out, trainer_kwargs)
