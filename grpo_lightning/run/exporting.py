"""Exporting the trained policy: after ``fit``, and from a checkpoint (``grpo-lightning export``, whose command line is :mod:`grpo_lightning.cli.export`).

Both write the same folder (weights, tokenizer, model card) through :func:`write_policy` into a
staged export (:mod:`grpo_lightning.run.export_dir`). When the export after ``fit`` fails (a full
disk, a folder that changed during training), :func:`export_failure` makes sure a checkpoint
holds the trained weights and raises :class:`ExportFailed`, whose message gives the one command
that exports them once the cause is fixed::

    grpo-lightning export --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt --export.dir out/model

The model card of an export from a checkpoint says what fit's would: :class:`ExportCardFacts`
keeps the run's card facts (data, steps, last metrics, an example prompt) in each checkpoint.
"""

from __future__ import annotations

import errno
import os
import shlex
from pathlib import Path
from typing import Any, Protocol

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from grpo_lightning.hf.model_card import CARD_FILE, ModelCardInfo, folder_name
from grpo_lightning.run.checkpointing import last_good_checkpoint, read_checkpoint
from grpo_lightning.run.folders import run_directory


class SavesPretrained(Protocol):
    """What an export needs of the module: ``GRPOModule.save_pretrained``."""

    def save_pretrained(self, path: str, merge_lora: bool = False, card: ModelCardInfo | None = None) -> str: ...

#: The command that exports a checkpoint (``python -m grpo_lightning export`` is the same).
EXPORT_COMMAND = "grpo-lightning export"
#: What to do with a sharded checkpoint (a folder, as FSDP2 writes), which only its strategy reads.
SHARDED = (
    f"a sharded checkpoint, which {EXPORT_COMMAND} cannot read (it reads single-file checkpoints). Export it "
    "under the strategy and number of processes that wrote it: in Python, trainer.validate(module, "
    "datamodule, ckpt_path=<it>), then module.save_pretrained(<folder>) on every process."
)


class ExportFailed(RuntimeError):
    """Training finished but its export did not; the message says where the weights are and how to
    export them."""


# ---- the export folder's contents --------------------------------------------------------------


def write_policy(
    module: SavesPretrained, folder: str | Path, location: str | Path, merge_lora: bool, card: ModelCardInfo | None
) -> None:
    """Write ``module``'s policy, tokenizer and model card into ``folder`` (a staging folder) as the
    export that will sit at ``location``. Call it on every rank: a sharded policy is gathered.

    The card names the folder it is written to by its name (:func:`folder_name`): the staging
    folder's unique name is made the name of ``location``, where the export ends up.
    """
    module.save_pretrained(str(folder), merge_lora=merge_lora, card=card)
    readme = Path(folder) / CARD_FILE
    staged, final = folder_name(folder), folder_name(location)
    if staged != final and readme.is_file():  # (other ranks write nothing: folder is location)
        readme.write_text(readme.read_text().replace(staged, final))


class ExportCardFacts(Callback):
    """Keeps in every checkpoint what the model card of an export says about the run (the data,
    the optimizer steps, the last metrics, an example prompt), so an export from the checkpoint
    has the card an export at that point of training would have."""

    def __init__(self) -> None:
        self._module: LightningModule | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._module = pl_module

    def state_dict(self) -> dict[str, Any]:
        info = getattr(self._module, "model_card_info", None)
        if info is None or self._module is None or self._module._trainer is None:
            return {}
        card = info()
        return {
            "dataset": card.dataset,
            "steps": card.steps,
            "metrics": dict(card.metrics),
            "example_prompt": card.example_prompt,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # facts about the past, read by export_checkpoint; nothing to restore


def recovery_command(ckpt: str | Path, target: str | Path, merge_lora: bool, overwrite: bool) -> str:
    """The command that exports ``ckpt`` into ``target`` with the same settings."""
    args = [*shlex.split(EXPORT_COMMAND), "--ckpt_path", str(ckpt), "--export.dir", str(target)]
    if merge_lora:
        args += ["--export.merge_lora", "true"]
    if overwrite:
        args += ["--export.overwrite", "true"]
    return shlex.join(args)


# ---- when the export after fit fails ------------------------------------------------------------


def _checkpoint_step(path: str) -> int | None:
    try:
        return int(read_checkpoint(path).get("global_step", -1))
    except Exception:  # unreadable: not one to export from
        return None


def final_checkpoint(trainer: Trainer) -> tuple[Path | None, str]:
    """A checkpoint file that holds the weights as training ended, and a note on how it was found.

    A ModelCheckpoint's last or best file when one is at the final step; else one is saved now
    (``final-step=<N>.ckpt`` in the checkpoint folder). Call it on every rank (saving may be
    collective); rank 0 decides.
    """
    step = trainer.global_step
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    found = None
    if trainer.is_global_zero:
        paths = [p for c in callbacks for p in (c.last_model_path, c.best_model_path) if p]
        found = next((p for p in paths if os.path.isfile(p) and _checkpoint_step(p) == step), None)
    found = trainer.strategy.broadcast(found)
    if found is not None:
        return Path(found), f"the checkpoint {found} holds the trained weights (step {step})"
    dirpath = next((c.dirpath for c in callbacks if c.dirpath), None)
    folder = Path(dirpath) if dirpath else Path(run_directory(trainer)) / "checkpoints"
    path = folder / f"final-step={step}.ckpt"
    try:
        trainer.save_checkpoint(path)
    except Exception as err:
        good = last_good_checkpoint(folder)
        older = f"; the newest checkpoint is {good}, from before the end of training" if good else ""
        return None, f"saving the trained weights to {path} failed too ({type(err).__name__}: {err}){older}"
    return path, f"the trained weights (step {step}) were saved to {path}"


def export_failure(
    trainer: Trainer, target: str, error: BaseException | None, merge_lora: bool, existed: bool
) -> ExportFailed:
    """The error for an export after fit that failed with ``error`` (None on other ranks than 0):
    makes sure a checkpoint holds the trained weights (every rank takes part) and says how to
    export from it."""
    ckpt, note = final_checkpoint(trainer)
    full = (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left" in str(error)
    cause = f"{type(error).__name__}: {error}" if error is not None else "on another process"
    state = f"{target} is as it was before" if existed else f"nothing was left at {target}"
    lines = [
        f"Training finished ({trainer.global_step} optimizer steps), but exporting the model to {target} "
        f"failed{' (the disk is full)' if full else ''}: {cause}.",
        f"The export was written beside the folder and never swapped in: {state}.",
    ]
    if ckpt is not None and ckpt.is_dir():
        lines.append(f"The weights are safe: {note}. It is a folder: {SHARDED}")
    elif ckpt is not None:
        lines.append(f"The weights are safe: {note}. Once the cause is fixed, export them with:")
        lines.append(f"  {recovery_command(ckpt, target, merge_lora, existed)}")
    else:
        lines.append(f"The trained weights could not be kept: {note}.")
    return ExportFailed("\n".join(lines))
