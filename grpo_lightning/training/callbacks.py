"""Side effects that observe training: sample-completion tables and reference-model sync.

GRPOModule adds these itself (``configure_callbacks``, the list :func:`module_callbacks` gives)
when its settings ask for them; they can also be given to the Trainer directly. Schedules count optimizer steps (``trainer.global_step``).
A training step makes ``num_iterations * steps_per_rollout`` optimizer steps, so "every n steps"
fires at the end of the training step in which the count crosses a multiple of n.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from grpo_lightning.hf.causal_lm import check_context_length, context_length
from grpo_lightning.hf.models import mix_reference
from grpo_lightning.run.interrupt import RunGuard
from grpo_lightning.training.model_summary import swap_default_summary
from grpo_lightning.training.progress import module_progress
from grpo_lightning.training.settings import Settings, optimizer_steps_per_batch, settings_of
from grpo_lightning.training.settings_groups import RefSync


def _crossed(trainer: Trainer, module: LightningModule, every: int) -> bool:
    """True when the training step that just ended took ``global_step`` past a multiple of ``every``."""
    after = trainer.global_step
    before = after - optimizer_steps_per_batch(module)
    return after // every > before // every


class RefModelSync(Callback):
    """TR-DPO: every ``sync_steps`` optimizer steps, ``ref <- alpha * policy + (1 - alpha) * ref``.

    The module then keeps the reference in its checkpoints, so a resumed run continues from the
    mixed reference, not from the starting weights.
    """

    def __init__(self, alpha: float = 0.6, sync_steps: int = 512) -> None:
        # Built for its checks of both values, with the module's messages.
        sync = RefSync(sync_ref_model=True, ref_model_mixup_alpha=alpha, ref_model_sync_steps=sync_steps)
        self.alpha, self.sync_steps = sync.ref_model_mixup_alpha, sync.ref_model_sync_steps

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        ref = getattr(pl_module, "ref_model", None)
        if ref is None:
            raise RuntimeError("RefModelSync needs a reference model: set beta > 0 (and no LoRA).")
        if _crossed(trainer, pl_module, self.sync_steps):
            mix_reference(ref, pl_module.policy, self.alpha)


def pick_rows(rewards: Tensor, group_size: int, count: int, per_prompt: int = 2) -> list[int]:
    """Up to ``count`` row indices of a rollout, ``per_prompt`` from each of several prompts.

    Groups whose rewards differ come first (they are the ones that teach something), in rollout
    order; within a group the best and the worst completion are shown, then the next best, so a
    table contrasts what the reward paid for with what it did not. ``rewards: [N]``, N = P * G
    (NaN counts as lowest).
    """
    if count < 1 or len(rewards) == 0:
        return []
    groups = rewards.view(-1, group_size) if len(rewards) % group_size == 0 else rewards.view(1, -1)
    filled = torch.nan_to_num(groups.float(), nan=float("-inf"))
    mixed = (filled.max(dim=1).values != filled.min(dim=1).values).tolist()
    order = [g for g in range(len(groups)) if mixed[g]] + [g for g in range(len(groups)) if not mixed[g]]
    width = groups.shape[1]
    take = min(per_prompt, width, count)
    picked: list[int] = []
    for g in order:
        ranked = torch.argsort(filled[g], descending=True, stable=True).tolist()
        # Best, worst, second best, second worst, ...
        alternating = [ranked[k // 2] if k % 2 == 0 else ranked[-(k // 2) - 1] for k in range(width)]
        picked.extend(g * width + j for j in list(dict.fromkeys(alternating))[:take])
        if len(picked) >= count:
            break
    return picked[:count]


class CompletionLogger(Callback):
    """Every ``every_n_steps`` optimizer steps, show a few sampled completions of rank 0.

    Prints a readable block to the console (``print_to_console``) and logs a table (step, prompt,
    completion, total reward, one column per reward function, advantage) to a wandb logger
    (``log_table``) or as markdown text to TensorBoard.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        num_completions: int = 4,
        print_to_console: bool = True,
        key: str = "completions",
        max_chars: int = 500,
    ) -> None:
        if every_n_steps < 1 or num_completions < 1:
            raise ValueError("every_n_steps and num_completions must be >= 1.")
        self.every_n_steps = every_n_steps
        self.num_completions = num_completions
        self.print_to_console = print_to_console
        self.key = key
        self.max_chars = max_chars

    def rows(
        self, pl_module: LightningModule, outputs: dict[str, Any], step: int
    ) -> tuple[list[str], list[list[Any]]]:
        """Table columns and ``num_completions`` rows of this step, spread over different prompts."""
        samples, advantages = outputs["samples"], outputs["advantages"]
        names = list(pl_module.scorer.names)
        columns = ["step", "prompt", "completion", "reward", *names, "advantage"]
        settings = settings_of(pl_module)
        group_size = settings.cadence.num_generations if settings is not None else 1
        data = []
        for i in pick_rows(samples.total, group_size, self.num_completions):
            per_func = [float(v) for v in samples.per_func[i].tolist()]
            data.append(
                [
                    step,
                    samples.prompts[i],
                    samples.completions[i],
                    float(samples.total[i]),
                    *per_func,
                    float(advantages[i]),
                ]
            )
        return columns, data

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero or not isinstance(outputs, dict) or "samples" not in outputs:
            return
        if not _crossed(trainer, pl_module, self.every_n_steps):
            return
        step = trainer.global_step
        columns, data = self.rows(pl_module, outputs, step)
        if self.print_to_console:
            print(self.format(columns, data))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key=self.key, columns=columns, data=data, step=step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(self.key, self._markdown(columns, data), global_step=step)

    def format(self, columns: list[str], data: list[list[Any]]) -> str:
        """A console-friendly block: one entry per completion, with its rewards."""
        lines = [f"---- sample completions at step {data[0][0] if data else '?'} ----"]
        for row in data:
            named = dict(zip(columns, row, strict=True))
            scores = ", ".join(f"{c}={named[c]:.3g}" for c in columns[3:])
            lines.append(f"[{scores}]")
            lines.append(f"  prompt:     {self._clip(named['prompt'])!r}")
            lines.append(f"  completion: {self._clip(named['completion'])!r}")
        return "\n".join(lines)

    def _clip(self, text: str) -> str:
        return text if len(text) <= self.max_chars else text[: self.max_chars] + " ..."

    def _markdown(self, columns: list[str], data: list[list[Any]]) -> str:
        def cell(v: Any) -> str:
            text = f"{v:.4g}" if isinstance(v, float) else str(v)
            return self._clip(text).replace("|", "\\|").replace("\n", "<br>")

        head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
        return head + "".join("\n| " + " | ".join(cell(v) for v in row) + " |" for row in data)


class StartChecks(Callback):
    """Before any step of fit, validate, test or predict: fail when the data module's longest prompt
    plus ``max_completion_length`` does not fit the model's context (a data module that reports its
    longest prompt with ``longest_prompt()``); before fitting, also say when the Trainer sends the
    metrics to the loggers less often than every training step."""

    def __init__(self, max_completion_length: int) -> None:
        self.max_completion_length = max_completion_length

    def check_prompt_lengths(self, trainer: Trainer, pl_module: LightningModule) -> None:
        longest = getattr(trainer.datamodule, "longest_prompt", None)
        if callable(longest):
            pl_module.configure_model()
            limit = context_length(pl_module.policy)
            check_context_length(longest(), self.max_completion_length, limit, "in the data")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check_prompt_lengths(trainer, pl_module)
        n = trainer.log_every_n_steps
        if n > 1 and trainer.loggers:
            rank_zero_info(
                f"GRPOModule logs once per training step (one rollout); Trainer(log_every_n_steps={n}) sends the "
                f"metrics to the loggers every {n} rollouts. Set log_every_n_steps=1 to see every one."
            )

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check_prompt_lengths(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check_prompt_lengths(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check_prompt_lengths(trainer, pl_module)


def module_callbacks(trainer: Trainer, settings: Settings) -> list[Callback]:
    """What GRPOModule adds to ``trainer``'s callbacks: its :class:`StartChecks`; Lightning's default
    progress bar swapped for its twin that counts optimizer steps, as ``max_steps`` does, or for
    progress lines when the output is not a terminal (:mod:`grpo_lightning.training.log_progress`); reference
    sync and completion logging when the settings ask for them; a RunGuard (checkpoints on
    SIGTERM/SIGINT/errors, atomic writes, resume checks) unless the Trainer has one, which then wins."""
    callbacks: list[Callback] = [StartChecks(settings.sampling.max_completion_length)]
    swap_default_summary(trainer)  # a GRPO module's FLOPs are never counted: no column of zeros
    default = trainer.progress_bar_callback
    bar = module_progress(default)
    if bar is not None:
        if not isinstance(bar, type(default)):
            # Lightning replaces a Trainer callback only by one of its own type: take the bar out here,
            # or both would report.
            trainer.callbacks.remove(default)
        callbacks.append(bar)
    if (ref_sync := settings.ref_sync).sync_ref_model:
        callbacks.append(RefModelSync(ref_sync.ref_model_mixup_alpha, ref_sync.ref_model_sync_steps))
    if (every := settings.logging.completions_every(trainer.log_every_n_steps)) > 0:
        callbacks.append(CompletionLogger(every, settings.logging.num_completions_to_log))
    if not any(isinstance(c, RunGuard) for c in trainer.callbacks):
        callbacks.append(RunGuard())
    return callbacks
