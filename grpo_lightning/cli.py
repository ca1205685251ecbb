"""``grpo-lightning fit|validate|test --config ...``: LightningCLI over GRPOModule and PromptDataModule."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from grpo_lightning.data import PromptDataModule
from grpo_lightning.module import GRPOModule


def _data_tokenizer(model: Any, tokenizer: Any) -> Any:
    """The prompts must be tokenized with the policy's tokenizer: its own setting, else the model's id."""
    if tokenizer is not None:
        return tokenizer
    return model if isinstance(model, str) else None


class GRPOLightningCLI(LightningCLI):
    """LightningCLI with the values the model and the data share linked, so they are set once."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            ("model.model", "model.tokenizer"), "data.tokenizer", compute_fn=_data_tokenizer
        )


def main(args: list[str] | None = None) -> GRPOLightningCLI:
    """Entry point of the ``grpo-lightning`` console script and ``python -m grpo_lightning``."""
    return GRPOLightningCLI(
        GRPOModule,
        PromptDataModule,
        args=args,
        # The module builds its own optimizer from its `optimizer` / `lr_scheduler` arguments.
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
    )
