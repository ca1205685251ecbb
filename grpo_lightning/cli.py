"""``grpo-lightning fit|validate|test|predict --config ...``: LightningCLI over GRPOModule and
PromptDataModule.

Each run owns one folder (:func:`~grpo_lightning.runs.run_directory`): the saved ``config.yaml``,
the logger's files (CSV, TensorBoard), ``checkpoints/``, the exported model (``hf_model/``, after
``fit``) and ``predictions.jsonl`` (after ``predict``). A second run gets a new folder; nothing is
written over.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from grpo_lightning.data import PromptDataModule
from grpo_lightning.module import GRPOModule
from grpo_lightning.predict import PredictionWriter
from grpo_lightning.runs import run_directory


def _data_tokenizer(model: Any, tokenizer: Any) -> Any:
    """The prompts must be tokenized with the policy's tokenizer: its own setting, else the model's id."""
    if tokenizer is not None:
        return tokenizer
    return model if isinstance(model, str) else None


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` in the run folder, beside the checkpoints, and
    refuses to write over another run's config."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        folder = run_directory(trainer)
        path = os.path.join(folder, self.config_filename)
        exists = trainer.strategy.broadcast(os.path.isfile(path) if trainer.is_global_zero else False)
        if exists:
            raise RuntimeError(
                f"{path} exists: another run already uses the folder {folder}. Give this run a logger (each "
                "run then gets its own version folder), or another --trainer.default_root_dir."
            )
        if trainer.is_global_zero:
            os.makedirs(folder, exist_ok=True)
            self.parser.save(self.config, path, skip_none=False, multifile=self.multifile)
        self.already_saved = trainer.strategy.broadcast(True)


class GRPOLightningCLI(LightningCLI):
    """LightningCLI with the values the model and the data share linked, so they are set once.

    After ``fit`` the policy is exported in Hugging Face format (``export.dir``, default
    ``<run folder>/hf_model``; ``export.merge_lora`` merges a LoRA adapter) and the paths of the run
    folder, the checkpoints and the export are printed. ``predict`` writes
    ``<run folder>/predictions.jsonl``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            ("model.model", "model.tokenizer"), "data.tokenizer", compute_fn=_data_tokenizer
        )
        parser.add_argument(
            "--export.dir",
            type=str | None,
            default=None,
            help="Where fit exports the policy (default: <run folder>/hf_model).",
        )
        parser.add_argument(
            "--export.merge_lora", type=bool, default=False, help="Merge a LoRA adapter on export."
        )
        parser.add_argument("--export.enabled", type=bool, default=True, help="Export the policy after fit.")
        parser.add_argument(
            "--export.push_to_hub",
            type=str | None,
            default=None,
            help="After fit, also upload the policy to this Hub model repository (owner/name; created private "
            "when missing). Needs a login (hf auth login) or HF_TOKEN.",
        )

    def before_predict(self) -> None:
        if not any(isinstance(c, PredictionWriter) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())

    def after_predict(self) -> None:
        writers = [c for c in self.trainer.callbacks if isinstance(c, PredictionWriter)]
        self._report("GRPO predict finished.", {"predictions": writers[0].path if writers else "(none)"})

    def after_fit(self) -> None:
        export = self.config[self.subcommand].export
        trainer, paths = self.trainer, {}
        folder = run_directory(trainer)
        paths["run folder"] = folder
        ckpt = trainer.checkpoint_callback
        if ckpt is not None:
            paths["best checkpoint"] = ckpt.best_model_path or "(none: nothing monitored)"
            paths["last checkpoint"] = ckpt.last_model_path or "(none)"
        if export.enabled:
            target = export.dir or os.path.join(folder, "hf_model")
            # Every rank takes part (a sharded policy is gathered); rank 0 writes.
            paths["exported model"] = self.model.save_pretrained(target, merge_lora=export.merge_lora)
        if export.push_to_hub:
            url = self.model.push_to_hub(export.push_to_hub, merge_lora=export.merge_lora, private=True)
            paths["pushed to the Hub"] = url or "(by rank 0)"
        self._report("GRPO run finished.", paths)

    def _report(self, title: str, paths: dict[str, Any]) -> None:
        if self.trainer.is_global_zero:
            width = max(len(k) for k in paths)
            lines = [f"  {k:<{width}}  {v}" for k, v in paths.items()]
            print(f"\n{title}\n" + "\n".join(lines), flush=True)


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
        save_config_callback=RunConfigSaver,
    )


def console_entry() -> None:
    """The ``grpo-lightning`` console script: returns nothing, so the exit status is 0 on success."""
    main()
