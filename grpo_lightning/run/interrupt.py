"""RunGuard: a run that stops early leaves a checkpoint to resume from and says how.

- SIGTERM (what SLURM and Kubernetes send) and SIGINT (Ctrl+C) let the training step in progress
  finish, save ``last.ckpt``, print the exact resume command and exit with ``128 + signal`` (143,
  130). A second Ctrl+C stops at once.
- An exception mid-run (a reward function failing at step 5) saves the state as it was when that
  step began, when the step had not yet moved the weights, so only the step in progress is lost; the
  exception then propagates as usual.
- Resuming checks the checkpoint against the run's settings (:mod:`grpo_lightning.run.resume`) and
  data (:mod:`grpo_lightning.run.resume_data`), and refuses a ``max_steps`` or ``max_epochs`` that is
  already reached.
- Checkpoints are written atomically (:class:`~grpo_lightning.run.checkpointing.AtomicCheckpointIO`; a
  sharded FSDP2 checkpoint folder by :meth:`~grpo_lightning.training.strategies.FSDP2Strategy.save_checkpoint`).

GRPOModule adds it by itself (``configure_callbacks``); the CLI passes its command line so the
printed resume command is the one to type.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from grpo_lightning.lightning_compat import replace_saved_loader_states, training_loader_states
from grpo_lightning.run.checkpoint_check import last_good_checkpoint
from grpo_lightning.run.checkpointing import AtomicCheckpointIO
from grpo_lightning.run.folders import run_directory
from grpo_lightning.run.resume import (
    apply_optimizer_settings,
    check_resume_settings,
    custom_optimizer_lr_change,
    describe_changes,
)
from grpo_lightning.run.resume_data import LoaderPosition, check_data_resume, loader_position

#: Lightning warns that a manual-optimization checkpoint holds the weights *after* the optimizer
#: step: for GRPOModule that is exactly the state to resume from (each training step is complete).
_MISLEADING_WARNING = "Using ModelCheckpoint with manual optimization and every_n_train_steps"


class TrainingInterrupted(SystemExit):
    """Raised at the end of a training step after SIGTERM/SIGINT; its exit code is 128 + the signal."""


def resume_command(command: Sequence[str] | None, ckpt: str | Path) -> str:
    """The command that resumes from ``ckpt``: ``command`` with its ``--ckpt_path`` replaced, or the
    Python call when the run did not come from the command line."""
    if not command:
        return f"trainer.fit(module, datamodule=datamodule, ckpt_path={str(ckpt)!r})"
    args, skip = [], False
    for arg in command:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            args.append(arg)
    return shlex.join([*args, "--ckpt_path", str(ckpt)])


class RunGuard(Callback):
    """Saves a resumable checkpoint on SIGTERM, SIGINT or an exception, and checks resumes.

    Args:
        command: the command line that started the run (``["grpo-lightning", "fit", ...]``), used to
            print the resume command; None prints the ``trainer.fit`` call instead.
        filename: name of the checkpoint written on interruption, in the checkpoint folder.
    """

    def __init__(self, command: Sequence[str] | None = None, filename: str = "last.ckpt") -> None:
        self.command = list(command) if command else None
        self.filename = filename
        self.signal_received: int | None = None
        self._previous: dict[int, Any] = {}
        self._in_step = False
        self._stepped = False  # an optimizer began a step during the training step in progress
        self._hooks: list[Any] = []
        self._loader_before_step: list[dict[str, Any]] | None = None
        self._rewind: list[dict[str, Any]] | None = None
        self._dir: Path | None = None
        self._training = False

    # ---- set-up ----------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            # A checkpoint is checked against the weights of the module that resumes from it.
            trainer.strategy.checkpoint_io = AtomicCheckpointIO(lambda: pl_module.state_dict().keys())
        warnings.filterwarnings("ignore", message=_MISLEADING_WARNING)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.signal_received = None
        self._training = True
        # The weights change inside optimizer.step(), before Lightning counts the step: a failure
        # there leaves a half-applied update, which must not be saved as the step's starting state.
        self._hooks = [opt.register_step_pre_hook(self._mark_stepped) for opt in trainer.optimizers]
        self._dir = None
        self.checkpoint_dir(trainer)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _mark_stepped(self, *_: Any) -> None:
        self._stepped = True

    def _restore_handlers(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._training = False
        self._restore_handlers()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_handlers()
        # Reward worker processes end with the fit (a notebook keeps no idle ones); they restart on use.
        for scorer in ("scorer", "accuracy_scorer"):
            pool = getattr(getattr(pl_module, scorer, None), "pool", None)
            if stage == "fit" and pool is not None:
                pool.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signal_received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl+C: stop now
        self.signal_received = signum
        print(
            f"\nReceived {signal.Signals(signum).name}: finishing the current training step, then saving a "
            "checkpoint and stopping (Ctrl+C again stops at once, without saving).",
            file=sys.stderr,
            flush=True,
        )
        previous = self._previous.get(signum)
        # Lightning's own SIGTERM handler stops its launcher's worker processes and flags the trainer.
        if signum == signal.SIGTERM and callable(previous):
            previous(signum, frame)

    # ---- steps -----------------------------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._in_step, self._stepped = True, False
        self._loader_before_step = _loader_states_before_current_batch(trainer)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._in_step = False
        if 0 <= trainer.max_steps <= trainer.global_step:
            return  # that was the last step: the run ends normally (and exports) anyway
        stop = self.signal_received is not None
        if trainer.world_size > 1:  # every rank stops after the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        signum = self.signal_received or signal.SIGTERM
        path = self._save(trainer)
        self._report(
            trainer, f"Stopped by {signal.Signals(signum).name} after step {trainer.global_step}", path
        )
        raise TrainingInterrupted(128 + int(signum))

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Save the state as of the start of the failing step (see the module docs). Errors before
        training starts (settings, a checkpoint being restored) save nothing: that state is not one to
        resume from."""
        self._restore_handlers()
        if isinstance(exception, TrainingInterrupted):
            return  # saved and reported already
        if isinstance(exception, KeyboardInterrupt) and self.signal_received == signal.SIGINT:
            # The second Ctrl+C: the user asked to stop at once, without waiting for a save.
            self._report(trainer, "Training stopped by a second Ctrl+C", None, "stopping at once, as asked")
            return
        if isinstance(exception, SIGTERMException):
            exception.code = 128 + signal.SIGTERM  # Lightning's own exception exits 0 otherwise
        what = f"{type(exception).__name__} at step {trainer.global_step + 1}"
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            what = f"{'SIGTERM' if isinstance(exception, SIGTERMException) else 'Ctrl+C'} at step {trainer.global_step}"
        if not self._training:
            return  # an error while setting up or restoring: its own message says it all; nothing to save
        reason = self._why_not_saved(trainer)
        if reason is not None:
            self._report(trainer, f"Training stopped by {what}", None, reason)
            return
        try:
            # The step in progress is dropped: the data loader goes back to where it was when it began.
            self._rewind = self._loader_before_step if self._in_step else None
            path = self._save(trainer)
        except Exception as err:  # a second failure must not hide the first one
            self._report(trainer, f"Training stopped by {what}", None, f"saving failed too ({err})")
            return
        finally:
            self._rewind = None
        self._report(trainer, f"Training stopped by {what}", path)

    def _why_not_saved(self, trainer: Trainer) -> str | None:
        if trainer.global_step == 0:
            return "no optimizer step had been made, so there is nothing to save"
        if self._in_step and self._stepped:
            return "the failing step had already begun changing the weights"
        if trainer.world_size > 1:
            return "an error on one of several processes cannot be saved from there"
        return None

    # ---- saving and reporting ----------------------------------------------------------------------

    def checkpoint_dir(self, trainer: Trainer) -> Path:
        """The ModelCheckpoint folder when there is one, else the run folder's ``checkpoints``
        (found once at the start of training, on every rank: finding it may be collective)."""
        if self._dir is None:
            dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
            self._dir = Path(dirpath) if dirpath else Path(run_directory(trainer)) / "checkpoints"
        return self._dir

    def _save(self, trainer: Trainer) -> Path:
        path = self.checkpoint_dir(trainer) / self.filename
        trainer.save_checkpoint(path)
        return path

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._rewind is not None:
            replace_saved_loader_states(checkpoint, self._rewind)

    def _report(self, trainer: Trainer, what: str, path: Path | None, reason: str | None = None) -> None:
        if not trainer.is_global_zero:
            return
        if path is not None:
            lines = [
                f"{what}. Saved a checkpoint to resume from: {path}",
                f"Resume with:\n  {resume_command(self.command, path)}",
            ]
        else:
            lines = [f"{what}; no checkpoint was saved: {reason}."]
            good = last_good_checkpoint(self._dir) if self._dir is not None else None
            if good is not None:
                lines.append(
                    f"The last checkpoint is {good}. Resume with:\n  {resume_command(self.command, good)}"
                )
        print("\n" + "\n".join(lines), file=sys.stderr, flush=True)

    # ---- resuming ----------------------------------------------------------------------------------

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        step = int(checkpoint.get("global_step", 0))
        if trainer.state.fn != "fit":
            return  # validate / test / predict from a checkpoint: nothing is resumed
        if trainer.max_steps is not None and 0 <= trainer.max_steps <= step:
            raise ValueError(
                f"The checkpoint is at step {step}, and max_steps={trainer.max_steps} is already reached: "
                f"resuming would train nothing. Raise max_steps above {step} (e.g. --trainer.max_steps "
                f"{step + max(step, 1)})."
            )
        position = loader_position(checkpoint)
        _refuse_reached_epochs(trainer, position)
        data_changes, data_note = _data_changes(trainer, checkpoint, position)
        saved, current = checkpoint.get("hyper_parameters", {}), dict(pl_module.hparams)
        changes = check_resume_settings(saved, current)
        # Only the built-in AdamW takes them from these settings; a custom optimizer has its own.
        factory = getattr(pl_module, "optimizer_factory", None)
        if factory is not None:
            custom = custom_optimizer_lr_change(factory, checkpoint)
            if custom is not None:
                apply_optimizer_settings(checkpoint, old_lr=custom[0], new_lr=custom[1])
                changes["optimizer lr"] = custom
        elif "learning_rate" in changes or "weight_decay" in changes:
            apply_optimizer_settings(
                checkpoint,
                old_lr=float(saved.get("learning_rate", current["learning_rate"])),
                new_lr=float(current["learning_rate"]),
                old_weight_decay=saved.get("weight_decay"),
                new_weight_decay=current.get("weight_decay"),
            )
        changes.update(data_changes)
        if trainer.is_global_zero:
            text = f"Resuming from step {step}."
            if changes:
                text += " Settings changed since the checkpoint (applied):\n" + describe_changes(changes)
            if data_note:
                text += "\n" + data_note
            print(text, file=sys.stderr, flush=True)


def _refuse_reached_epochs(trainer: Trainer, position: LoaderPosition) -> None:
    """A checkpoint whose epochs already reach ``max_epochs`` would train nothing: refused."""
    max_epochs = trainer.max_epochs
    if max_epochs is not None and 0 <= max_epochs <= position.epochs_done:
        done = position.epochs_done
        raise ValueError(
            f"The checkpoint has finished {done} epoch(s), and max_epochs={max_epochs} is already reached: "
            f"resuming would train nothing. Raise max_epochs above {done} (e.g. --trainer.max_epochs "
            f"{done + 1})."
        )


def _data_changes(
    trainer: Trainer, checkpoint: dict[str, Any], position: LoaderPosition
) -> tuple[dict[str, Any], str | None]:
    """The data module's changes since the checkpoint, ``data.``-prefixed, and how they apply
    (:func:`~grpo_lightning.run.resume_data.check_data_resume`; raises for a change it refuses)."""
    datamodule = trainer.datamodule
    if datamodule is None:
        return {}, None
    saved_state = checkpoint.get(type(datamodule).__qualname__, {})
    return check_data_resume(
        checkpoint.get(datamodule.CHECKPOINT_HYPER_PARAMS_KEY, {}),
        dict(datamodule.hparams),
        saved_state if isinstance(saved_state, dict) else {},
        datamodule.state_dict() or {},
        position,
        str(trainer.ckpt_path) if trainer.ckpt_path else None,
    )


def _loader_states_before_current_batch(trainer: Trainer) -> list[dict[str, Any]] | None:
    """The training loader's saved state as it was before the batch now in progress was taken.

    Lightning already fetched that batch when ``on_train_batch_start`` runs; the package's
    ``ResumableDataLoader`` counts it in ``batches``, so one is taken off. Loaders of another kind
    are left as they are.
    """
    saved = training_loader_states(trainer)
    if saved is None:
        return None
    states = [dict(s) for s in saved]
    for state in states:
        if isinstance(state.get("batches"), int) and state["batches"] > 0:
            state["batches"] -= 1
    return states
