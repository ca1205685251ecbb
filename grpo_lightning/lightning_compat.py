"""Every use of Lightning's non-public API in the package, and why no public one serves.

Checked against Lightning 2.6.0 and 2.6.6 (``pyproject.toml`` pins ``lightning>=2.6,<2.7``);
``tests/test_lightning_compat.py`` fails when the installed Lightning changes one of them. The rest
of the package calls the names below, never a private name of Lightning's.

- :func:`count_optimizer_step`: ``LightningOptimizer._on_before_step`` / ``_on_after_step``. A step
  whose gradient is zero everywhere is skipped but must still count in ``global_step`` (``max_steps``,
  schedules, checkpoints). Lightning counts a manual-optimization step only in these two hooks of its
  optimizer wrapper; ``optimizer.step()`` would also move the weights (moments, weight decay).
- :func:`mark_optimizer_stepped`: PyTorch's ``optimizer._opt_called``, which its ``LRScheduler`` sets
  in the ``optimizer.step`` wrapper and checks to warn "lr_scheduler.step() before
  optimizer.step()": a skipped step steps the scheduler without running the optimizer.
- :func:`distributed_sampler_enabled`: ``trainer._accelerator_connector.use_distributed_sampler``.
  The Trainer keeps its ``use_distributed_sampler`` argument nowhere public, and the data module
  needs it to know the training order before any loader exists (its resume key).
- :func:`set_data_parallel_size`: ``ModelParallelStrategy._data_parallel_size``. The strategy takes
  the size only in ``__init__``, before the Trainer tells it the number of nodes and devices, and
  resolves ``"auto"`` to the number of nodes (the rest going to tensor parallelism).
- :func:`summary_max_depth`, :func:`summary_table`: ``ModelSummary._max_depth`` (its setting has no
  getter) and ``_format_summary_table`` (the only way to print Lightning's table with a column left
  out; ``ModelSummary.summarize`` prints every column it is given, FLOPs included).
- :func:`progress_bar_arguments`: the progress bars' ``_leave`` and Rich's ``_console_kwargs``
  (``__init__`` arguments with no getter), to build a twin of a bar with the same settings.
- :class:`TrainDescriptionHook`: ``RichProgressBar._get_train_description``, the only place the
  training bar's "Epoch N/M" label is made.
- :func:`pending_wandb_init`: ``WandbLogger._wandb_init`` and ``_experiment``: the arguments it will
  pass to ``wandb.init`` can be changed only there, before its run starts, and reading the public
  ``experiment`` starts the run.
- :func:`training_loader_states`, :func:`saved_fit_progress`, :func:`replace_saved_loader_states`:
  the fit loop's state, in a running Trainer (``trainer.fit_loop`` is a private ``_FitLoop``) and in
  a checkpoint (``checkpoint["loops"]["fit_loop"]``, undocumented): where the training loader stood
  and which batch of which epoch the run was at, which resuming on other data must compare.
- :class:`HookedLightningCLI`: ``LightningCLI._add_subcommands`` (the subcommands' help comes from
  the Trainer methods' docstrings), ``_parse_ckpt_path`` (it overwrites every ``model.*`` setting
  with the checkpoint's) and ``_run_subcommand`` (no public hook sees a failure of ``before_fit``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelSummary, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

# ---- optimizer steps ------------------------------------------------------------------------------


def count_optimizer_step(optimizer: LightningOptimizer) -> None:
    """Count one optimizer step of a manual-optimization module (``global_step`` and the step
    progress) without running the optimizer or the precision plugin."""
    optimizer._on_before_step()
    optimizer._on_after_step()


def mark_optimizer_stepped(optimizer: torch.optim.Optimizer) -> None:
    """Record on ``optimizer`` that it stepped, as ``optimizer.step`` does for its LR scheduler: the
    scheduler's next ``step()`` then does not warn that it ran before the optimizer."""
    optimizer._opt_called = True  # type: ignore[attr-defined]


# ---- Trainer and strategy settings ----------------------------------------------------------------


def distributed_sampler_enabled(trainer: Trainer) -> bool:
    """The Trainer's ``use_distributed_sampler``: whether it puts a ``DistributedSampler`` in place of
    the training loader's sampler when it runs on several processes."""
    return bool(trainer._accelerator_connector.use_distributed_sampler)


def set_data_parallel_size(strategy: ModelParallelStrategy, size: int) -> None:
    """Make ``strategy`` build its device mesh with ``size`` data-parallel replicas; call it before
    ``ModelParallelStrategy.setup_environment``, which builds the mesh."""
    strategy._data_parallel_size = size


# ---- callbacks --------------------------------------------------------------------------------------


def summary_max_depth(callback: ModelSummary) -> int:
    """The ``max_depth`` a model summary callback was built with."""
    return int(callback._max_depth)


def summary_table(
    total_parameters: int,
    trainable_parameters: int,
    model_size: float,
    total_training_modes: dict[str, int],
    total_flops: int,
    *columns: tuple[str, list[str]],
) -> str:
    """Lightning's model summary text: a table of ``columns`` (header, one cell per layer), then a
    line each for the trainable, non-trainable and total parameters, the size in MB, the modules
    in train and eval mode, and last the FLOPs."""
    return _format_summary_table(
        total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *columns
    )


def progress_bar_arguments(bar: TQDMProgressBar | RichProgressBar) -> dict[str, Any]:
    """The ``__init__`` arguments that made ``bar`` (one of Lightning's two bars), to build its twin."""
    if isinstance(bar, RichProgressBar):
        return {
            "refresh_rate": bar.refresh_rate,
            "leave": bar._leave,
            "theme": bar.theme,
            "console_kwargs": bar._console_kwargs,
        }
    return {"refresh_rate": bar.refresh_rate, "process_position": bar.process_position, "leave": bar._leave}


class TrainDescriptionHook:
    """Progress bar mixin: the label of an epoch's training bar comes from :meth:`epoch_label`,
    which a subclass overrides (``super().epoch_label`` is Lightning's). Not named
    ``train_description``: the TQDM bar holds its label under that name. Only the Rich bar asks
    for one; the TQDM bar writes "Epoch N" itself."""

    def _get_train_description(self, current_epoch: int) -> str:
        return self.epoch_label(current_epoch)

    def epoch_label(self, current_epoch: int) -> str:
        """The label of the training bar of epoch ``current_epoch`` (Lightning's: "Epoch N/M")."""
        return super()._get_train_description(current_epoch)  # type: ignore[misc]


def pending_wandb_init(logger: Any) -> dict[str, Any] | None:
    """The keyword arguments a ``WandbLogger`` will pass to ``wandb.init``, to change in place before
    its run starts; None for another logger, or once the run has started."""
    init = getattr(logger, "_wandb_init", None)
    if not isinstance(init, dict) or getattr(logger, "_experiment", None) is not None:
        return None
    return init


# ---- the fit loop's state -----------------------------------------------------------------------------


def training_loader_states(trainer: Trainer) -> list[dict[str, Any]] | None:
    """The states of the training loaders that have one (``state_dict()``), as a checkpoint saved now
    would hold them; None when there are none (no loader yet, or none with a state)."""
    return trainer.fit_loop.on_save_checkpoint().get("combined_loader")


@dataclass(frozen=True)
class SavedFitProgress:
    """Where a checkpoint's fit loop stood. ``batches_*``: Lightning's counts for the epoch in
    progress (a batch is ``ready`` once fetched, ``processed`` once its step ended; ``None`` when not
    saved); ``loader_states``: the training loaders' saved states, as :func:`training_loader_states`."""

    epochs_started: int = 0
    epochs_processed: int = 0
    batches_ready: int | None = None
    batches_processed: int = 0
    is_last_batch: bool = False
    loader_states: list[Any] = field(default_factory=list)


def _fit_loop(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    return checkpoint.get("loops", {}).get("fit_loop", {})


def saved_fit_progress(checkpoint: Mapping[str, Any]) -> SavedFitProgress:
    """The fit loop's progress saved in a Lightning checkpoint (zeros where it saved none)."""
    loop = _fit_loop(checkpoint)
    epochs = loop.get("epoch_progress", {}).get("current", {})
    progress = loop.get("epoch_loop.batch_progress", {})
    batches = progress.get("current", {})
    return SavedFitProgress(
        epochs_started=int(epochs.get("started", 0)),
        epochs_processed=int(epochs.get("processed", 0)),
        batches_ready=batches.get("ready"),
        batches_processed=batches.get("processed", 0),
        is_last_batch=bool(progress.get("is_last_batch")),
        loader_states=list(loop.get("state_dict", {}).get("combined_loader") or []),
    )


def replace_saved_loader_states(checkpoint: dict[str, Any], states: list[dict[str, Any]]) -> None:
    """Write ``states`` as the training loaders' states of a checkpoint being saved, in place; a
    checkpoint that saved none is left as it is (its loaders have no state to restore)."""
    state = _fit_loop(checkpoint).get("state_dict", {})
    if "combined_loader" in state:
        state["combined_loader"] = states


# ---- the command line -------------------------------------------------------------------------------


class HookedLightningCLI(LightningCLI):
    """``LightningCLI`` with three of its private steps open to a subclass under public names:

    - :attr:`subcommand_help`: each subcommand's one-line description, in ``--help``'s list and its
      own ``--help`` (Lightning's: the first line of the Trainer method's docstring).
    - :meth:`check_ckpt_path`: what is done with ``--ckpt_path`` once the arguments are parsed
      (Lightning's: load the checkpoint's hyperparameters over the ``model.*`` settings).
    - :meth:`run_subcommand`: runs ``before_<subcommand>``, the Trainer method and
      ``after_<subcommand>``; an override can see all three fail.
    """

    subcommand_help: ClassVar[Mapping[str, str]] = {}

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        self._subcommand_parsers = {}
        subcommands = parser.add_subcommands()
        for subcommand in self.subcommands():
            help_line = self.subcommand_help[subcommand]
            options = {"description": help_line, **kwargs.get(subcommand, {})}
            subparser = self._prepare_subcommand_parser(self.trainer_class, subcommand, **options)
            self._subcommand_parsers[subcommand] = subparser
            subcommands.add_subcommand(subcommand, subparser, help=help_line)

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        self.check_ckpt_path(self.config[subcommand].get("ckpt_path") if subcommand else None)

    def check_ckpt_path(self, ckpt_path: str | None) -> None:
        """Called once the arguments are parsed with the subcommand's ``--ckpt_path`` (None without
        one); Lightning's loads the checkpoint's hyperparameters over the ``model.*`` settings."""
        super()._parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        self.run_subcommand(subcommand)

    def run_subcommand(self, subcommand: str) -> None:
        """Run ``before_<subcommand>``, the Trainer's ``subcommand`` and ``after_<subcommand>``."""
        super()._run_subcommand(subcommand)
