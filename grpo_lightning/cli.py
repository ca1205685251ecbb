"""``grpo-lightning fit|validate|test --config ...``: LightningCLI over GRPOModule and PromptDataModule."""

from __future__ import annotations

import os
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
    """LightningCLI with the values the model and the data share linked, so they are set once.

    After ``fit`` the policy is exported in Hugging Face format (``export.dir``, default
    ``<log dir>/hf_model``; ``export.merge_lora`` merges a LoRA adapter) and the paths of the logs,
    the checkpoints and the export are printed.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            ("model.model", "model.tokenizer"), "data.tokenizer", compute_fn=_data_tokenizer
        )
        parser.add_argument("--export.dir", type=str | None, default=None, help="Where fit exports the policy.")
        parser.add_argument("--export.merge_lora", type=bool, default=False, help="Merge a LoRA adapter on export.")
        parser.add_argument("--export.enabled", type=bool, default=True, help="Export the policy after fit.")

    def after_fit(self) -> None:
        export = self.config[self.subcommand].export
        trainer, paths = self.trainer, {}
        log_dir = trainer.log_dir or trainer.default_root_dir
        paths["logs"] = log_dir
        ckpt = trainer.checkpoint_callback
        if ckpt is not None:
            paths["best checkpoint"] = ckpt.best_model_path or "(none: nothing monitored)"
            paths["last checkpoint"] = ckpt.last_model_path or "(none)"
        if export.enabled:
            target = export.dir or os.path.join(log_dir, "hf_model")
            # Every rank takes part (a sharded policy is gathered); rank 0 writes.
            paths["exported model"] = self.model.save_pretrained(target, merge_lora=export.merge_lora)
        if trainer.is_global_zero:
            width = max(len(k) for k in paths)
            lines = [f"  {k:<{width}}  {v}" for k, v in paths.items()]
            print("\nGRPO run finished.\n" + "\n".join(lines), flush=True)


def main(args: list[str] | None = None, run: bool = True) -> GRPOLightningCLI:
    """Run the CLI on ``args`` (default: the command line) and return it.

    ``run=False`` only parses and builds the model, data module and trainer (no subcommand).
    """
    return GRPOLightningCLI(
        GRPOModule,
        PromptDataModule,
        args=args,
        run=run,
        # The module builds its own optimizer from its `optimizer` / `lr_scheduler` arguments.
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
    )


def console_entry() -> None:
    """The ``grpo-lightning`` console script: returns nothing, so the exit status is 0 on success."""
    main()
