"""Where a run keeps its files: one folder per run, whatever the logger.

Lightning's ``ModelCheckpoint`` writes to ``<save_dir>/<name>/<version>/checkpoints`` of the first
logger (``<default_root_dir>/checkpoints`` without one), but a CSV or TensorBoard logger's
``log_dir`` and a wandb logger's ``save_dir`` differ from it. The run folder used here is the
checkpoints' parent, so the saved config, the checkpoints, the export and the predictions of a run
sit together, and a second run (a new logger version) never writes into the first one's folder.
"""

from __future__ import annotations

import os

from lightning.pytorch import Trainer


def run_directory(trainer: Trainer) -> str:
    """The folder of this run (the same on every rank): ``<save_dir>/<name>/<version>`` of the first
    logger, as ``ModelCheckpoint`` builds it, or ``default_root_dir`` when there is no logger."""
    path = trainer.default_root_dir
    if trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        version = logger.version
        if version is None and trainer.is_global_zero:
            _ = logger.experiment  # wandb names its run (the version) only once the run exists
            version = logger.version
        version = version if isinstance(version, str) else f"version_{version}"
        path = os.path.join(save_dir, str(logger.name), version)
    return trainer.strategy.broadcast(path)

