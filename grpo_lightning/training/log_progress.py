"""A progress report for log files: flushed lines instead of a live bar when the output is not a terminal.

Under ``nohup``, SLURM or ``> log`` a live bar is drawn once, at exit, and a run looks dead until
then. When standard output is not a terminal (and not a notebook), GRPOModule installs
:class:`LogProgress` in place of Lightning's default bar (``configure_callbacks``), which prints:

- during fit, a line at the first training step, whenever the optimizer-step count crosses a
  multiple of ``every_n_steps``, after ``every_seconds`` without a line, and at the last step::

      step 25/250 (10%) | 1.21 s/step | ETA 4m32s | reward 0.438 | kl 0.0012 | len 31.2

  (the values are the last rollout's ``train/reward``, ``train/kl`` when logged (beta > 0) and
  ``train/completions/mean_length``; seconds per optimizer step and the ETA leave validation out);
- each validation, test result as one line when it is computed: ``val step 25: accuracy 0.470 | ...``;
- during a long validation, test or prediction loop, a line after ``every_seconds`` without one:
  ``val batch 12/50 | 3.10 s/batch | ETA 1m58s``.

Cadence: ``every_n_steps`` defaults to 5% of the run's optimizer steps and ``every_seconds`` to 30,
so a fast run prints about 20 lines and a slow one a line every 30 s. The environment variables
``GRPO_LIGHTNING_PROGRESS_STEPS`` (a positive integer) and ``GRPO_LIGHTNING_PROGRESS_SECONDS``
(seconds; 0 = no lines on time) set them when the callback's arguments do not. ``Trainer(
enable_progress_bar=False)`` stays silent; a progress bar of one's own is left alone; give
``LogProgress()`` in the Trainer's callbacks to get lines on a terminal too.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar

from grpo_lightning.training.settings import optimizer_steps_per_batch, settings_of

STEPS_VARIABLE = "GRPO_LIGHTNING_PROGRESS_STEPS"
SECONDS_VARIABLE = "GRPO_LIGHTNING_PROGRESS_SECONDS"
#: Default line cadence: this share of the run's optimizer steps, or this many seconds without a line.
DEFAULT_FRACTION = 0.05
DEFAULT_SECONDS = 30.0
#: Metrics of the training line: (label, logged name); a name not logged is left out (kl with beta = 0).
TRAIN_FIELDS = (("reward", "train/reward"), ("kl", "train/kl"), ("len", "train/completions/mean_length"))
#: Shorter labels in the evaluation lines.
EVAL_LABELS = {"completions/mean_length": "len"}


def interactive_output(stream: TextIO | None = None) -> bool:
    """Whether a live progress bar can be seen on ``stream`` (default: ``sys.stdout``, where
    Lightning's bars write): a terminal, or a Jupyter / Colab notebook (whose output is no tty)."""
    if in_notebook():
        return True
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed or detached stream
        return False


def in_notebook() -> bool:
    """True inside a Jupyter kernel (notebooks, VS Code, Colab)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return shell is not None and (
        type(shell).__name__ == "ZMQInteractiveShell" or "google.colab" in sys.modules
    )


def cadence_from_env(environ: Mapping[str, str]) -> tuple[int | None, float | None]:
    """``(every_n_steps, every_seconds)`` set by the environment (None where unset); a bad value is
    refused naming the variable."""
    steps = seconds = None
    raw = environ.get(STEPS_VARIABLE, "").strip()
    if raw:
        try:
            steps = int(raw)
        except ValueError:
            steps = 0
        if steps < 1:
            raise ValueError(
                f"{STEPS_VARIABLE}={environ[STEPS_VARIABLE]!r} is not a step count: set it to a positive "
                "integer (optimizer steps between progress lines), or unset it for 5% of the run."
            )
    raw = environ.get(SECONDS_VARIABLE, "").strip()
    if raw:
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not seconds >= 0 or math.isinf(seconds):
            raise ValueError(
                f"{SECONDS_VARIABLE}={environ[SECONDS_VARIABLE]!r} is not a number of seconds: set it to a "
                f"number >= 0 (0 = no lines on time alone), or unset it for {DEFAULT_SECONDS:g}."
            )
    return steps, seconds


def format_duration(seconds: float) -> str:
    """``42s``, ``4m32s``, ``2h05m`` (rounded to the second)."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_value(value: float) -> str:
    """Three significant digits (``0.438``, ``0.00120``, ``31.2``), whole numbers from 1000 on."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:#.3g}"


def train_line(
    step: int, total: int | None, seconds_per_step: float | None, metrics: Mapping[str, float]
) -> str:
    """``step 25/250 (10%) | 1.21 s/step | ETA 4m32s | reward 0.438 | kl 0.0012 | len 31.2``; the
    total, percentage and ETA only with a known total, the rate only when measured."""
    parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}"]
    if seconds_per_step is not None:
        parts.append(f"{format_value(seconds_per_step)} s/step")
        if total:
            parts.append(f"ETA {format_duration(max(total - step, 0) * seconds_per_step)}")
    parts += [f"{label} {format_value(metrics[name])}" for label, name in TRAIN_FIELDS if name in metrics]
    return " | ".join(parts)


def eval_line(stage: str, step: int | None, metrics: Mapping[str, float], num_samples: int) -> str:
    """``val step 25: accuracy 0.470 | pass@8 0.812 | ...``: every ``<stage>/`` metric in the order
    logged, pass@k and maj@k at k = ``num_samples`` only (the loggers have every k)."""
    prefix = f"{stage}/"
    shown = []
    for name, value in metrics.items():
        if not name.startswith(prefix):
            continue
        short = name[len(prefix) :]
        if "@" in short and not short.endswith(f"@{num_samples}"):
            continue
        shown.append(f"{EVAL_LABELS.get(short, short)} {format_value(value)}")
    head = f"{stage} step {step}" if step is not None else stage
    return f"{head}: " + (" | ".join(shown) if shown else "no metrics logged")


def batch_line(label: str, done: int, total: float, seconds_per_batch: float) -> str:
    """``val batch 12/50 | 3.10 s/batch | ETA 1m58s`` (no total nor ETA for an endless loader)."""
    known = math.isfinite(total) and total > 0
    parts = [f"{label} batch {done}/{int(total)}" if known else f"{label} batch {done}"]
    parts.append(f"{format_value(seconds_per_batch)} s/batch")
    if known:
        parts.append(f"ETA {format_duration(max(total - done, 0) * seconds_per_batch)}")
    return " | ".join(parts)


def total_optimizer_steps(trainer: Trainer, steps_per_batch: int) -> int | None:
    """The optimizer steps this fit ends at: ``max_steps``, or the epochs' batches times
    ``steps_per_batch`` (whichever comes first); None when neither bounds the run."""
    limits = []
    if trainer.max_steps is not None and trainer.max_steps > 0:
        limits.append(trainer.max_steps)
    batches, epochs = trainer.num_training_batches, trainer.max_epochs
    if epochs is not None and epochs > 0 and math.isfinite(batches):
        limits.append(int(epochs * batches * steps_per_batch))
    return min(limits) if limits else None


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The logged metrics as floats (tensors of one element), in their order."""
    out = {}
    for name, value in metrics.items():
        try:
            out[name] = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


class LogProgress(ProgressBar):
    """Progress as flushed lines, for a log file (see the module docs). Lines come from rank 0 only.

    Args:
        every_n_steps: A line when the optimizer-step count crosses a multiple of this (None: the
            ``GRPO_LIGHTNING_PROGRESS_STEPS`` variable, else 5% of the run).
        every_seconds: A line after this many seconds without one, in training and in long
            evaluation loops (0 = never on time alone; None: ``GRPO_LIGHTNING_PROGRESS_SECONDS``, else 30).
    """

    def __init__(self, every_n_steps: int | None = None, every_seconds: float | None = None) -> None:
        super().__init__()
        env_steps, env_seconds = cadence_from_env(os.environ)
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer; got {every_n_steps}.")
        if every_seconds is not None and not every_seconds >= 0:
            raise ValueError(f"every_seconds must be >= 0 (0 = no lines on time alone); got {every_seconds}.")
        self.every_n_steps = every_n_steps if every_n_steps is not None else env_steps
        if every_seconds is None:
            every_seconds = env_seconds if env_seconds is not None else DEFAULT_SECONDS
        self.every_seconds = every_seconds
        self._enabled = True
        self._last_line = 0.0  # time of the last line printed
        self._mark = (0.0, 0)  # (time, global_step) the seconds per step are measured from
        self._paused = 0.0  # seconds of validation since the mark (not training time)
        self._eval_start = 0.0
        self._eval_done = 0
        self._total: int | None = None
        self._every: int | None = None
        self._first = False  # the next training step is the first of this fit: always a line

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._last_line = time.monotonic()  # time-based lines count from the start of each run

    # ---- ProgressBar -----------------------------------------------------------------------------

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def _emit(self, line: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(line, file=sys.stdout, flush=True)
            self._last_line = time.monotonic()

    def _due_on_time(self) -> bool:
        return self.every_seconds > 0 and time.monotonic() - self._last_line >= self.every_seconds

    # ---- training --------------------------------------------------------------------------------

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._total = total_optimizer_steps(trainer, optimizer_steps_per_batch(pl_module))
        default = max(1, math.ceil(self._total * DEFAULT_FRACTION)) if self._total else None
        self._every = self.every_n_steps if self.every_n_steps is not None else default
        now = time.monotonic()
        self._mark, self._paused, self._last_line = (now, trainer.global_step), 0.0, now
        self._first = True

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        before = step - optimizer_steps_per_batch(pl_module)
        crossed = self._every is not None and step // self._every > before // self._every
        last = self._total is not None and step >= self._total
        if not (self._first or crossed or last or self._due_on_time()):
            return
        self._first = False
        now = time.monotonic()
        mark_time, mark_step = self._mark
        rate = (now - mark_time - self._paused) / (step - mark_step) if step > mark_step else None
        self._mark, self._paused = (now, step), 0.0
        self._emit(train_line(step, self._total, rate, _scalars(trainer.callback_metrics)))

    # ---- evaluation loops ------------------------------------------------------------------------

    def _loop_start(self) -> None:
        self._eval_start, self._eval_done = time.monotonic(), 0

    def _loop_batch(self, label: str, total: float) -> None:
        self._eval_done += 1
        if self._due_on_time():
            rate = (time.monotonic() - self._eval_start) / self._eval_done
            self._emit(batch_line(label, self._eval_done, total, rate))

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start()

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        batches = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        self._loop_batch("sanity check" if trainer.sanity_checking else "val", sum(batches))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._paused += time.monotonic() - self._eval_start  # not training time
        if trainer.sanity_checking:
            return  # its figures are printed (or said to be partial) by the module itself
        self._eval_result(trainer, pl_module, "val")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start()

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._loop_batch("test", sum(trainer.num_test_batches))

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_result(trainer, pl_module, "test")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start()

    def on_predict_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._loop_batch("predict", sum(trainer.num_predict_batches))

    def _eval_result(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        step = trainer.global_step if trainer.state.fn == "fit" else None
        settings = settings_of(pl_module)
        num_samples = settings.evaluation.val_num_samples if settings is not None else 1
        self._emit(eval_line(stage, step, _scalars(trainer.callback_metrics), num_samples))
