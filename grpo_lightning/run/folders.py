"""Where a run keeps its files: one folder per run, whatever the logger.

Lightning's ``ModelCheckpoint`` writes to ``<save_dir>/<name>/<version>/checkpoints`` of the first
logger (``<default_root_dir>/checkpoints`` without one), but a CSV or TensorBoard logger's
``log_dir`` and a wandb logger's ``save_dir`` differ from it. The run folder used here is the
checkpoints' parent, so the saved config, the checkpoints, the export and the predictions of a run
sit together, and a second run (a new logger version) never writes into the first one's folder.

A run that fails before its first step leaves no folder behind that holds nothing but its own
set-up records (:func:`remove_unused_run_folder`): otherwise every failed start would take a
``version_N``.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer

#: What a run writes into its folder before its first step (the saved config, the logger's
#: hyperparameters, TensorBoard's event file with them): a folder holding only these, written by a
#: run that failed before any step, records nothing the user lacks.
SETUP_RECORDS = ("config.yaml", "hparams.yaml", "events.out.tfevents.*")


def _logger_folder(logger: Any, default_root_dir: str, version: Any) -> str:
    """``<save_dir>/<name>/<version>`` as ``ModelCheckpoint`` builds it (``version`` None: the
    ``<save_dir>/<name>`` folder that will hold it)."""
    save_dir = logger.save_dir if logger.save_dir is not None else default_root_dir
    if version is None:
        return os.path.join(save_dir, str(logger.name))
    version = version if isinstance(version, str) else f"version_{version}"
    return os.path.join(save_dir, str(logger.name), version)


def run_directory(trainer: Trainer) -> str:
    """The folder of this run (the same on every rank): ``<save_dir>/<name>/<version>`` of the first
    logger, as ``ModelCheckpoint`` builds it, or ``default_root_dir`` when there is no logger."""
    path = trainer.default_root_dir
    if trainer.loggers:
        logger = trainer.loggers[0]
        version = logger.version
        if version is None and trainer.is_global_zero:
            _ = logger.experiment  # wandb names its run (the version) only once the run exists
            version = logger.version
        path = _logger_folder(logger, trainer.default_root_dir, version)
    return trainer.strategy.broadcast(path)


def known_run_directory(trainer: Trainer) -> str | None:
    """The run folder, found without starting a logger's run (before ``fit``): None when the first
    logger names its version only once its run exists (wandb). Not collective."""
    if not trainer.loggers:
        return trainer.default_root_dir
    logger = trainer.loggers[0]
    version = logger.version  # CSV and TensorBoard pick the next free version_N here (nothing is created)
    return None if version is None else _logger_folder(logger, trainer.default_root_dir, version)


def run_output_folders(trainer: Trainer) -> dict[str, str]:
    """Every folder this run writes into, by what it is, found without starting a logger's run:
    the run folder, each logger's folder (``<save_dir>/<name>`` for a logger whose version is not
    known yet: its run folder will lie inside it) and each ``ModelCheckpoint.dirpath`` given."""
    folders: dict[str, str] = {}
    run = known_run_directory(trainer)
    if run is not None:
        folders[f"the run folder {run}"] = run
    for logger in trainer.loggers:
        path = _logger_folder(logger, trainer.default_root_dir, logger.version)
        folders.setdefault(f"the folder of the {type(logger).__name__} ({path})", path)
    for callback in trainer.checkpoint_callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath:
            folders.setdefault(f"the checkpoint folder {dirpath}", str(dirpath))
    return folders


def missing_folders(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first: what a run that is
    about to write there will create (and may remove again if it fails)."""
    missing, current = [], Path(path).absolute()
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing


def remove_unused_run_folder(created: Sequence[Path], records: Sequence[str] = SETUP_RECORDS) -> list[Path]:
    """After a run failed before its first step: remove the folders in ``created`` (deepest first,
    as :func:`missing_folders` listed them before the run): the run folder when it holds nothing
    but ``records`` (names or patterns), then each parent that is left empty. A folder holding
    anything else is left as it is, and so are its parents. Returns the folders removed."""
    removed: list[Path] = []
    for depth, folder in enumerate(created):
        if not folder.is_dir() or folder.is_symlink():
            break
        entries = list(folder.iterdir())
        allowed = records if depth == 0 else ()
        if not all(e.is_file() and any(fnmatch.fnmatch(e.name, r) for r in allowed) for e in entries):
            break
        for entry in entries:
            entry.unlink()
        folder.rmdir()
        removed.append(folder)
    return removed
