"""Silence messages a user can do nothing about, and only those (each filter names its message).

- torch >= 2.10 deprecates ``isinstance(treespec, LeafSpec)``, which Lightning 2.6 still uses on
  every step: a FutureWarning about Lightning's code, not the user's.
- Lightning advertises ``litlogger`` / ``litmodels`` with "Tip:" lines at every fit.
- Lightning announces that a callback from ``configure_callbacks`` replaces the Trainer's: the
  module swaps the default progress bar for its optimizer-step twin, on purpose, and a second
  ``validate``/``test``/``fit`` with the same Trainer replaces the module's own callbacks of the
  first (only these names are silenced: a user's callback that gets replaced is still announced).
- Lightning says "Received SIGTERM" after RunGuard has said what it does about it, and that
  ``weights_only`` defaults to False whenever a checkpoint is saved without the argument.
- transformers shows bars while it reads the weights from the disk and writes them: they count
  tensors, not the download (whose bars stay), and the run reports what it saved where.
- A resumed run gets a folder of its own, and Lightning warns that the checkpoints' folder changed.
- wandb >= 0.22 warns about the ``anonymous=None`` that Lightning 2.6's WandbLogger passes (it has
  no effect), and that the git root does not exist when the logger's folder is not made yet.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from grpo_lightning.lightning_compat import pending_wandb_init

# The callbacks GRPOModule.configure_callbacks returns (grpo_lightning.training.callbacks.module_callbacks) and the
# default progress bars it replaces.
MODULE_CALLBACKS = (
    "StartChecks|RefModelSync|CompletionLogger|RunGuard|LogProgress"
    "|StepTQDMProgressBar|StepRichProgressBar|TQDMProgressBar|RichProgressBar"
)
_LIGHTNING_NOTICES = re.compile(
    r"^💡 Tip: .*\b(litlogger|litmodels)\b"
    r"|^The following callbacks returned in `LightningModule.configure_callbacks` will override existing "
    rf"callbacks passed to Trainer: ({MODULE_CALLBACKS})(, ({MODULE_CALLBACKS}))*$"
)
# logger name -> the one message of it to drop
_LIGHTNING_LOGGER_NOTICES = {
    "lightning.pytorch.trainer.connectors.signal_connector": re.compile(r"^(\[rank: \d+\] )?Received SIGTERM: "),
    "lightning.pytorch.trainer.connectors.checkpoint_connector": re.compile(
        r"^`weights_only` was not set, defaulting to `False`\.$"
    ),
}
# transformers' bars (utils.logging.tqdm) that only load or write weights already on the disk.
_WEIGHT_BARS = ("Loading weights", "Writing model shards")


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message matches ``pattern``."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def _add_filter(logger_name: str, pattern: re.Pattern[str]) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _DropMessages) and f.pattern is pattern for f in logger.filters):
        logger.addFilter(_DropMessages(pattern))


def _weight_bar_hook(previous: Callable[..., Any] | None) -> Callable[..., Any]:
    """A transformers tqdm hook that disables the weight loading/writing bars, and passes every other
    bar on (to ``previous``, another hook, when there was one)."""

    def hook(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs.get("desc") in _WEIGHT_BARS:
            kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

    hook.hides_weight_bars = True  # type: ignore[attr-defined]
    return hook


def _quiet_weight_bars() -> None:
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:  # an older transformers: no hook to set, and no such bars either
        return
    previous = getattr(hf_logging, "_tqdm_hook", None)
    if not getattr(previous, "hides_weight_bars", False):
        set_hook(_weight_bar_hook(previous))


def quiet_known_noise() -> None:
    """Install the filters once (idempotent)."""
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    # A resumed run writes into its own new folder by design; Lightning warns that the checkpoint
    # callback's folder changed from the old run's.
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        _add_filter(name, _LIGHTNING_NOTICES)
    for name, pattern in _LIGHTNING_LOGGER_NOTICES.items():
        _add_filter(name, pattern)
    _quiet_weight_bars()


def quiet_logger_start(loggers: Iterable[Any]) -> None:
    """Before the loggers start their runs (Lightning starts them when fitting begins): create each
    wandb logger's folder and drop the ``anonymous=None`` argument wandb warns about."""
    for logger in loggers:
        init = pending_wandb_init(logger)
        if init is None:
            continue
        if "anonymous" in init and init["anonymous"] is None:
            del init["anonymous"]
        if isinstance(logger.save_dir, str):
            os.makedirs(logger.save_dir, exist_ok=True)
