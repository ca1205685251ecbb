"""The settings groups that live with GRPOModule itself (the loss, sampling and optimizer groups live
with the code that uses them: :class:`~grpo_lightning.algorithm.losses.LossConfig`,
:class:`~grpo_lightning.rollout.engine.SamplingConfig`, :class:`~grpo_lightning.training.optim.OptimizerConfig`).

Each field is one of GRPOModule's arguments, by the same name and with the same default; each
group checks its values when built, and every message names the setting and how to fix it.

The rollout layout: each device takes P prompts per training step and samples
G = ``num_generations`` completions of each, N = P * G rows. Each of the ``num_iterations`` passes
splits them into ``steps_per_rollout`` mini-batches (one optimizer step each), and every mini-batch
into micro-batches of ``micro_batch_size`` rows (one forward/backward each; by default as many as
fit a memory target, :mod:`~grpo_lightning.algorithm.micro_batch`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from grpo_lightning.algorithm.micro_batch import StepMemory
from grpo_lightning.algorithm.update import BatchLayout, batch_layout
from grpo_lightning.logprobs import DEFAULT_CHUNK_SIZE
from grpo_lightning.rewards.scorer import RewardErrors


def at_least(name: str, value: Any, minimum: float = 1) -> None:
    """Refuse ``value`` below ``minimum`` (or None), naming the setting ``name``."""
    if value is None or value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}.")


@dataclass(frozen=True)
class Cadence:
    """How many completions a step samples and how its updates use them."""

    num_generations: int = 8
    """G, completions sampled per prompt (at least 2)."""
    num_iterations: int = 1
    """Passes over each rollout (mu)."""
    steps_per_rollout: int = 1
    """Optimizer steps per pass: the rollout is cut into this many mini-batches."""
    micro_batch_size: int | None = None
    """Rows per forward/backward; None = as many as fit the step memory target of
    :mod:`~grpo_lightning.algorithm.micro_batch` (the whole mini-batch for small models, and for
    ``bnpo``, whose loss depends on the split)."""
    reuse_sampling_logprobs: bool = True
    """Take pi_old from the sampling pass when the engine reports it, instead of a no-grad pass."""
    dynamic_sampling: bool = False
    """Replace groups whose rewards are all equal by groups of fresh prompts."""
    max_dynamic_sampling_rounds: int = 4
    """Most extra generation rounds per training step for dynamic sampling."""

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations={self.num_generations}: GRPO compares completions of the same prompt, so it "
                "needs at least 2 per prompt (8 is usual)."
            )
        at_least("num_iterations", self.num_iterations)
        at_least("steps_per_rollout", self.steps_per_rollout)
        if self.micro_batch_size is not None:
            at_least("micro_batch_size", self.micro_batch_size)
        at_least("max_dynamic_sampling_rounds", self.max_dynamic_sampling_rounds, 0)

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps per training step: ``num_iterations * steps_per_rollout``."""
        return self.num_iterations * self.steps_per_rollout

    @property
    def policy_moves_before_reuse(self) -> bool:
        """True when an optimizer step comes before the rollout's last use, so pi_old != pi."""
        return self.optimizer_steps > 1

    def layout(self, prompts_per_device: int, memory: StepMemory | None = None) -> BatchLayout:
        """The rows / mini-batch / micro-batch sizes for this many prompts per device (checked).

        Without ``micro_batch_size``, the micro-batch is the one ``memory`` chooses (the rollout's
        width and the model's sizes); without ``memory`` (before any rollout), the whole mini-batch.
        """
        layout = batch_layout(
            prompts_per_device, self.num_generations, self.steps_per_rollout, self.micro_batch_size
        )
        if self.micro_batch_size is not None or memory is None:
            return layout
        return replace(layout, micro_batch_size=memory.micro_batch_size(layout.mini_batch_size))


@dataclass(frozen=True)
class RefSync:
    """TR-DPO: every ``ref_model_sync_steps`` optimizer steps, ``ref <- alpha * policy + (1 - alpha) * ref``."""

    sync_ref_model: bool = False
    """Mix the policy into the reference; False = the reference stays the starting weights."""
    ref_model_mixup_alpha: float = 0.6
    """alpha, the policy's weight in the mix."""
    ref_model_sync_steps: int = 512
    """The period, in optimizer steps."""

    def __post_init__(self) -> None:
        if not 0 < self.ref_model_mixup_alpha <= 1:
            raise ValueError(f"ref_model_mixup_alpha={self.ref_model_mixup_alpha} must be in (0, 1].")
        at_least("ref_model_sync_steps", self.ref_model_sync_steps)


@dataclass(frozen=True)
class RewardSettings:
    """How the reward functions are called. The weights' count and the choice of ``reward_errors``
    are checked by :class:`~grpo_lightning.rewards.scorer.RewardScorer`, which knows the functions."""

    reward_weights: Sequence[float] | None = None
    """One weight per reward function; None = 1 each."""
    reward_workers: int = 0
    """Score in this many worker processes (0 = in the training process)."""
    reward_timeout: float | None = None
    """Seconds one reward call may take in a worker; None = no limit."""
    reward_errors: RewardErrors = "raise"
    """A reward call that fails: ``raise`` stops the run, ``none`` scores that completion None."""

    def __post_init__(self) -> None:
        if self.reward_workers < 0:
            raise ValueError(
                f"reward_workers={self.reward_workers} must be >= 0 (0 = score in the training process)."
            )
        if self.reward_timeout is not None and not self.reward_timeout > 0:
            raise ValueError(
                f"reward_timeout={self.reward_timeout} must be > 0 seconds, or None for no limit."
            )


@dataclass(frozen=True)
class EvalSettings:
    """Validation, test and predict: how many samples per prompt, and what counts as correct."""

    val_num_samples: int = 1
    """Sampled completions per validation prompt for mean@N, pass@k and maj@k (1 = greedy only)."""
    accuracy_threshold: float = 1.0
    """A completion is correct when its accuracy reward is at least this."""

    def __post_init__(self) -> None:
        at_least("val_num_samples", self.val_num_samples)
        if not math.isfinite(self.accuracy_threshold):
            raise ValueError(
                f"accuracy_threshold={self.accuracy_threshold} must be a finite number (a reward of at least it "
                "counts as correct; 1.0 for 0/1 rewards)."
            )


@dataclass(frozen=True)
class LoggingSettings:
    """Sample-completion tables (:class:`~grpo_lightning.training.callbacks.CompletionLogger`)."""

    log_completions: bool = False
    """TRL's switch: with ``log_completions_every_n_steps`` 0, show them every ``log_every_n_steps`` steps."""
    log_completions_every_n_steps: int = 0
    """Show sample completions every n optimizer steps (0 = never, unless ``log_completions``)."""
    num_completions_to_log: int = 4
    """How many completions each table shows."""

    def __post_init__(self) -> None:
        at_least("log_completions_every_n_steps", self.log_completions_every_n_steps, 0)
        at_least("num_completions_to_log", self.num_completions_to_log)

    def completions_every(self, log_every_n_steps: int) -> int:
        """Optimizer steps between completion tables (0 = none), given the Trainer's ``log_every_n_steps``."""
        if self.log_completions_every_n_steps > 0:
            return self.log_completions_every_n_steps
        return max(log_every_n_steps, 1) if self.log_completions else 0


@dataclass(frozen=True)
class ModelSettings:
    """How the policy is loaded and run."""

    model_kwargs: dict[str, Any] | None = None
    """Passed to ``from_pretrained`` (``dtype``, ``attn_implementation``, ``revision``, ...)."""
    disable_dropout: bool = True
    """Set dropout to 0, so that pi and pi_old are the same function."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more time)."""
    logprob_chunk_size: int = DEFAULT_CHUNK_SIZE
    """Token positions per LM-head chunk in the log-prob passes."""

    def __post_init__(self) -> None:
        at_least("logprob_chunk_size", self.logprob_chunk_size)
