"""``grpo-lightning fit|validate|test|predict --config ...``: LightningCLI over GRPOModule and
PromptDataModule; ``grpo-lightning export --ckpt_path ... --export.dir ...`` exports a checkpoint
(:mod:`grpo_lightning.run.exporting`).

Each run owns one folder (:func:`~grpo_lightning.run.folders.run_directory`): the saved ``config.yaml``,
the logger's files (CSV, TensorBoard), ``checkpoints/``, the exported model (``hf_model/``, after
``fit``) and ``predictions.jsonl`` (after ``predict``). A second run gets a new folder; nothing is
written over, and a run that fails before its first step takes back the folder it made.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonargparse.typing import register_type
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback

from grpo_lightning.cli.export import export_command
from grpo_lightning.cli.parser import GRPOArgumentParser, program_name
from grpo_lightning.data import PromptDataModule
from grpo_lightning.data.sources import InMemoryDataset
from grpo_lightning.evaluation.predict import PredictionWriter
from grpo_lightning.hf.models import BuiltModel
from grpo_lightning.lightning_compat import HookedLightningCLI
from grpo_lightning.module import GRPOModule
from grpo_lightning.run.checkpointing import check_checkpoint_file
from grpo_lightning.run.export_dir import StagedExport, check_export_target, recover_leftovers
from grpo_lightning.run.exporting import ExportCardFacts, export_failure, write_policy
from grpo_lightning.run.folders import (
    known_run_directory,
    missing_folders,
    remove_unused_run_folder,
    run_directory,
    run_output_folders,
)
from grpo_lightning.run.interrupt import RunGuard
from grpo_lightning.run.report import RunWatch, checkpoint_lines
from grpo_lightning.training.model_summary import swap_default_summary


def _objects_only(what: str) -> Callable[[Any], Any]:
    def refuse(value: Any) -> Any:
        raise ValueError(f"expected {what} object, which only Python can pass (main({{...}}), not text).")

    return refuse


# A built model or an in-memory data set is a value for the parser, not a class to build from a
# class_path (nor one to list in --help as such).
for _type, _what in (
    (InMemoryDataset, "a datasets.Dataset or DatasetDict"),
    (BuiltModel, "a PreTrainedModel"),
):
    register_type(_type, deserializer=_objects_only(_what), type_check=lambda value, t: isinstance(value, t))


def _data_tokenizer(model: Any, tokenizer: Any) -> Any:
    """The prompts must be tokenized with the policy's tokenizer: its own setting, else the model's id."""
    if tokenizer is not None:
        return tokenizer
    return model if isinstance(model, str) else None


def _refuse_relative_checkpoint(ckpt_path: str) -> None:
    """Refuse ``--ckpt_path last`` (and Lightning's other names for a checkpoint of this run's folder)."""
    if ckpt_path in ("last", "hpc", "registry"):
        raise ValueError(
            f"--ckpt_path {ckpt_path} looks in this run's own folder, and every run gets a new one, so it "
            "would find nothing and start from scratch. Give the checkpoint's path, e.g. --ckpt_path "
            "runs/quickstart/version_0/checkpoints/last.ckpt (the end of each run prints it)."
        )


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` in the run folder, beside the checkpoints, and
    refuses to write over another run's config.

    ``ckpt_path`` is left out (saved as null): the file records the settings, so that running it
    again starts a new run rather than silently resuming the old one (resuming is asked for with
    ``--ckpt_path``, and the run says so when it starts).
    """

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
            config = self.config.clone()
            resumed_from = config.get("ckpt_path")
            if "ckpt_path" in config:
                config.ckpt_path = None
            self.parser.save(config, path, skip_none=False, multifile=self.multifile)
            if resumed_from:  # say where this run came from, without making a re-run resume
                text = Path(path).read_text()
                Path(path).write_text(f"# This run resumed from {resumed_from} (--ckpt_path).\n{text}")
        self.already_saved = trainer.strategy.broadcast(True)


SUBCOMMANDS = {
    "fit": "Train the policy with GRPO; at the end export it (Hugging Face format) into the run folder.",
    "validate": "Sample completions for the validation prompts and report their rewards and accuracy "
    "(val/*).",
    "test": "Sample completions for the test prompts and report their rewards and accuracy (test/*).",
    "predict": "Write the completions for the test prompts, with their rewards, to "
    "<run folder>/predictions.jsonl.",
}
DESCRIPTION = (
    "GRPO (group relative policy optimization) for language models, on PyTorch Lightning: train a "
    "policy on prompts scored by reward functions (fit), evaluate it (validate, test), write its "
    "completions (predict). To export the policy of a checkpoint: {prog} export --help."
)


class GRPOLightningCLI(HookedLightningCLI):
    """LightningCLI with the values the model and the data share linked, so they are set once.

    After ``fit`` the policy is exported in Hugging Face format (``export.dir``, default
    ``<run folder>/hf_model``; ``export.merge_lora`` merges a LoRA adapter) and the paths of the run
    folder, the checkpoints and the export are printed. ``predict`` writes
    ``<run folder>/predictions.jsonl``.
    """

    # Lightning's describes each subcommand with the Trainer method's docstring ("will call the model
    # forward function"): these say what each does here.
    subcommand_help = SUBCOMMANDS

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
            "--export.overwrite", type=bool, default=False, help="Replace a non-empty export.dir as a whole."
        )
        parser.add_argument(
            "--export.push_to_hub",
            type=str | None,
            default=None,
            help="After fit, also upload the policy to this Hub model repository (owner/name; created private "
            "when missing). Needs a login (hf auth login) or HF_TOKEN.",
        )

    def check_ckpt_path(self, ckpt_path: str | None) -> None:
        # Lightning's CLI would overwrite every model.* setting with the checkpoint's: keep what the user
        # asked for; RunGuard applies it, or refuses what a checkpoint cannot continue under.
        if ckpt_path:
            _refuse_relative_checkpoint(ckpt_path)  # before the file check: the cause is not a missing file
            check_checkpoint_file(ckpt_path)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        swap_default_summary(trainer)  # its FLOPs are always 0 for a GRPO module
        return trainer

    def before_predict(self) -> None:
        if not any(isinstance(c, PredictionWriter) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())

    def after_predict(self) -> None:
        writers = [c for c in self.trainer.callbacks if isinstance(c, PredictionWriter)]
        self._report(
            "GRPO predict finished.",
            {"run folder": run_directory(self.trainer), "predictions": writers[0].path if writers else "(none)"},
        )

    def _after_evaluation(self) -> None:
        # validate and test get a run folder of their own (config.yaml, the logger's metrics): say which.
        self._report(f"GRPO {self.subcommand} finished.", {"run folder": run_directory(self.trainer)})

    after_validate = after_test = _after_evaluation

    def run_subcommand(self, subcommand: str) -> None:
        # A run that fails before its first step takes back the run folder it made, when that holds
        # nothing but its set-up records: otherwise every failed start leaves a version_N behind.
        run = known_run_directory(self.trainer) if self.trainer.is_global_zero else None
        created = missing_folders(run) if run is not None else []
        try:
            super().run_subcommand(subcommand)
        except BaseException:
            watch = self._watch()
            if created and watch is not None and not watch.stepped:
                remove_unused_run_folder(created)
            raise

    def _watch(self) -> RunWatch | None:
        return next((c for c in self.trainer.callbacks if isinstance(c, RunWatch)), None)

    def before_fit(self) -> None:
        export = self.config[self.subcommand].export
        if export.merge_lora and not self.model.settings.lora:
            raise ValueError(
                "--export.merge_lora is true, but the model trains no LoRA adapter (model.lora is not set): "
                "there is nothing to merge. Drop --export.merge_lora, or set model.lora to train an adapter."
            )
        if not export.enabled:
            given = [f"--export.{k}" for k in ("dir", "overwrite", "merge_lora") if export[k]]
            if given:
                raise ValueError(
                    f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set, but --export.enabled is "
                    "false: nothing is exported. Drop one of them."
                )
            return
        # Checked now, not after the whole training: the folder, and that it stays clear of the run's own.
        run = known_run_directory(self.trainer)
        default = os.path.join(run, "hf_model") if run is not None else None
        target = export.dir or default
        if target is None:
            return  # the run folder is named when the logger's run starts (wandb): checked at the export
        config_file = self.save_config_kwargs.get("config_filename", "config.yaml")
        if export.dir is None and os.path.isfile(os.path.join(run, config_file)):
            return  # another run's folder: RunConfigSaver refuses it, naming that cause
        if self.trainer.is_global_zero:
            for note in recover_leftovers(target):
                print(note, file=sys.stderr, flush=True)
        avoid = run_output_folders(self.trainer)
        check_export_target(target, export.overwrite, avoid=avoid, allowed=default)

    def after_fit(self) -> None:
        export = self.config[self.subcommand].export
        trainer = self.trainer
        folder = run_directory(trainer)
        paths = {"run folder": folder, **checkpoint_lines(trainer, self._watch(), folder)}
        if export.enabled:
            target = export.dir or os.path.join(folder, "hf_model")
            paths["exported model"] = self._export(target, export.merge_lora)
        if export.push_to_hub:
            url = self.model.push_to_hub(export.push_to_hub, merge_lora=export.merge_lora, private=True)
            paths["pushed to the Hub"] = url or "(by rank 0)"
        self._report("GRPO run finished.", paths)

    def _export(self, target: str, merge_lora: bool) -> str:
        """Export the policy into ``target`` through a staged folder (rank 0 writes; every rank takes
        part, as a sharded policy is gathered). On failure, raise ExportFailed saying where the
        trained weights are and how to export them."""
        trainer, staged, error = self.trainer, None, None
        existed = os.path.isdir(target) and bool(os.listdir(target))
        card = self.model.model_card_info()
        if trainer.is_global_zero:
            try:
                staged = StagedExport(target)
            except Exception as err:
                error = err
        if trainer.strategy.broadcast(error is None):
            try:
                write_policy(self.model, staged.path if staged else target, target, merge_lora, card)
                for note in staged.commit() if staged else []:
                    print(note, file=sys.stderr, flush=True)
            except Exception as err:
                error = err
                if staged is not None:
                    staged.discard()
        if not trainer.strategy.broadcast(error is None):
            raise export_failure(trainer, target, error, merge_lora, existed) from error
        return target

    def _report(self, title: str, paths: dict[str, Any]) -> None:
        if self.trainer.is_global_zero:
            width = max(len(k) for k in paths)
            lines = [f"  {k:<{width}}  {v}" for k, v in paths.items()]
            print(f"\n{title}\n" + "\n".join(lines), flush=True)


def main(args: list[str] | None = None, run: bool = True) -> GRPOLightningCLI:
    """Run the CLI on ``args`` (default: the command line) and return it.

    ``run=False`` only parses and builds the model, data module and trainer (no subcommand).
    """
    argv = list(args) if isinstance(args, (list, tuple)) else sys.argv[1:] if args is None else None
    prog = program_name(sys.argv[0] if sys.argv else "")
    return GRPOLightningCLI(
        GRPOModule,
        PromptDataModule,
        args=args,
        run=run,
        # Saves and prints the resume command on SIGTERM/SIGINT/errors.
        trainer_defaults={
            "callbacks": [
                RunGuard(["grpo-lightning", *argv] if argv is not None else None),
                RunWatch(),  # what ran: for the end report and a failed start
                ExportCardFacts(),  # an export from a checkpoint gets fit's model card
            ]
        },
        # The module builds its own optimizer from its `optimizer` / `lr_scheduler` arguments.
        auto_configure_optimizers=False,
        save_config_callback=RunConfigSaver,
        parser_class=GRPOArgumentParser,
        parser_kwargs={"description": DESCRIPTION.format(prog=prog), "prog": prog},
    )


def console_entry() -> None:
    """The ``grpo-lightning`` command line: returns nothing, so the exit status is 0 on success.
    ``grpo-lightning export ...`` exports a checkpoint (:func:`~grpo_lightning.cli.export.export_command`).
    Errors are raised; :func:`grpo_lightning.__main__.main` prints those of this package's checks."""
    if sys.argv[1:2] == ["export"]:
        export_command(sys.argv[2:])
        return
    main()
