"""Silence messages a user can do nothing about, and only those (each filter names its message).

- torch >= 2.10 deprecates ``isinstance(treespec, LeafSpec)``, which Lightning 2.6 still uses on
  every step: a FutureWarning about Lightning's code, not the user's.
- Lightning advertises ``litlogger`` / ``litmodels`` with "Tip:" lines at every fit.
- Lightning announces that a callback from ``configure_callbacks`` replaces the Trainer's; the
  module swaps only the default progress bar for its optimizer-step twin, on purpose.
- A resumed run gets a folder of its own, and Lightning warns that the checkpoints' folder changed.
- wandb >= 0.22 warns about the ``anonymous=None`` that Lightning 2.6's WandbLogger passes (it has
  no effect), and that the git root does not exist when the logger's folder is not made yet.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterable
from typing import Any

_LIGHTNING_NOTICES = re.compile(
    r"^💡 Tip: .*\b(litlogger|litmodels)\b"
    r"|^The following callbacks returned in `LightningModule.configure_callbacks` will override existing "
    r"callbacks passed to Trainer: (RichProgressBar|TQDMProgressBar)$"
)


class _DropLightningNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _LIGHTNING_NOTICES.search(record.getMessage())


def quiet_known_noise() -> None:
    """Install the filters once (idempotent)."""
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    # A resumed run writes into its own new folder by design; Lightning warns that the checkpoint
    # callback's folder changed from the old run's.
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningNotices) for f in logger.filters):
            logger.addFilter(_DropLightningNotices())


def quiet_logger_start(loggers: Iterable[Any]) -> None:
    """Before the loggers start their runs (Lightning starts them when fitting begins): create each
    wandb logger's folder and drop the ``anonymous=None`` argument wandb warns about."""
    for logger in loggers:
        init = getattr(logger, "_wandb_init", None)
        if not isinstance(init, dict) or getattr(logger, "_experiment", None) is not None:
            continue
        if "anonymous" in init and init["anonymous"] is None:
            del init["anonymous"]
        if isinstance(logger.save_dir, str):
            os.makedirs(logger.save_dir, exist_ok=True)
