"""GRPOModule's settings as typed groups, each checked once when built; every message names the
setting to change.

The rollout layout: each device takes P prompts per training step and samples
G = ``num_generations`` completions of each, N = P * G rows. Each of the ``num_iterations`` passes
splits them into ``steps_per_rollout`` mini-batches (one optimizer step each), and every mini-batch
into micro-batches of ``micro_batch_size`` rows (one forward/backward each).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from grpo_lightning.algorithm.losses import LossConfig
from grpo_lightning.algorithm.update import BatchLayout, batch_layout
from grpo_lightning.logprobs import DEFAULT_CHUNK_SIZE
from grpo_lightning.rollout.engine import SamplingConfig
from grpo_lightning.training.optim import OptimizerConfig

T = TypeVar("T")


def _positive(name: str, value: Any, minimum: float = 1) -> None:
    if value is None or value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}.")


def _pick(cls: type[T], h: Mapping[str, Any], **extra: Any) -> T:
    """``cls`` built from the settings in ``h`` that share its field names (GRPOModule's names)."""
    return cls(**{f.name: h[f.name] for f in fields(cls) if f.name in h}, **extra)  # type: ignore[call-arg]


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
    """Rows per forward/backward; None = the whole mini-batch."""
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
        _positive("num_iterations", self.num_iterations)
        _positive("steps_per_rollout", self.steps_per_rollout)
        if self.micro_batch_size is not None:
            _positive("micro_batch_size", self.micro_batch_size)
        if self.max_dynamic_sampling_rounds < 0:
            raise ValueError(f"max_dynamic_sampling_rounds={self.max_dynamic_sampling_rounds} must be >= 0.")

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps per training step: ``num_iterations * steps_per_rollout``."""
        return self.num_iterations * self.steps_per_rollout

    @property
    def policy_moves_before_reuse(self) -> bool:
        """True when an optimizer step comes before the rollout's last use, so pi_old != pi."""
        return self.optimizer_steps > 1

    def layout(self, prompts_per_device: int) -> BatchLayout:
        """The rows / mini-batch / micro-batch sizes for this many prompts per device (checked)."""
        return batch_layout(
            prompts_per_device, self.num_generations, self.steps_per_rollout, self.micro_batch_size
        )


@dataclass(frozen=True)
class RefSync:
    """TR-DPO: every ``ref_model_sync_steps`` optimizer steps, ``ref <- alpha * policy + (1 - alpha) * ref``."""

    ref_model_mixup_alpha: float = 0.6
    """alpha, the policy's weight in the mix."""
    ref_model_sync_steps: int = 512
    """The period, in optimizer steps."""

    def __post_init__(self) -> None:
        if not 0 < self.ref_model_mixup_alpha <= 1:
            raise ValueError(f"ref_model_mixup_alpha={self.ref_model_mixup_alpha} must be in (0, 1].")
        _positive("ref_model_sync_steps", self.ref_model_sync_steps)


@dataclass(frozen=True)
class Settings:
    """GRPOModule's settings, grouped and checked once (built from its flat arguments by :meth:`from_hparams`)."""

    loss: LossConfig
    """The objective: advantage scaling, clipping, KL weight, aggregation."""
    cadence: Cadence
    """Completions per prompt, passes, optimizer steps and micro-batches per rollout."""
    optimizer: OptimizerConfig
    """The default optimizer and schedule, gradient clipping."""
    sampling: SamplingConfig
    """How completions are sampled."""
    ref_sync: RefSync | None = None
    """TR-DPO reference mixing; None = the reference stays the starting weights."""
    lora: bool = False
    """A LoRA adapter is trained (its reference is the base model with the adapter off)."""
    val_num_samples: int = 1
    """Sampled completions per validation prompt for pass@k."""
    logprob_chunk_size: int = DEFAULT_CHUNK_SIZE
    """Token positions per LM-head chunk in the log-prob passes."""

    def __post_init__(self) -> None:
        if self.ref_sync is not None:
            if self.loss.beta == 0:
                raise ValueError(
                    "sync_ref_model=True updates the reference model, which only exists when beta > 0: set beta > 0 "
                    "or sync_ref_model=False."
                )
            if self.lora:
                raise ValueError(
                    "sync_ref_model=True cannot be used with lora: the reference of a LoRA policy is its base model "
                    "with the adapter disabled, which is never updated. Drop lora or set sync_ref_model=False."
                )
        _positive("val_num_samples", self.val_num_samples)
        _positive("logprob_chunk_size", self.logprob_chunk_size)

    @classmethod
    def from_hparams(
        cls, h: Mapping[str, Any], *, lora: Any = None, optimizer: Any = None, lr_scheduler: Any = None
    ) -> Settings:
        """Group GRPOModule's arguments ``h`` (its ``hparams``). ``lora``, ``optimizer`` and
        ``lr_scheduler`` are passed apart: they may be objects, which ``hparams`` leaves out."""
        # NaN passes every comparison (``nan < 0`` is False), so non-finite numbers are refused first.
        for name, value in h.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name}={value} must be a finite number.")
        sampling = SamplingConfig(
            max_completion_length=h["max_completion_length"],
            temperature=h["temperature"],
            top_p=h["top_p"],
            top_k=h["top_k"] or 0,
            min_p=h["min_p"],
            repetition_penalty=h["repetition_penalty"],
            generation_kwargs=dict(h["generation_kwargs"] or {}),
        )
        return cls(
            loss=_pick(LossConfig, h),
            cadence=_pick(Cadence, h),
            optimizer=_pick(
                OptimizerConfig,
                h,
                custom_optimizer=optimizer is not None,
                custom_lr_scheduler=lr_scheduler is not None,
            ),
            sampling=sampling,
            ref_sync=_pick(RefSync, h) if h["sync_ref_model"] else None,
            lora=lora is not None,
            val_num_samples=h["val_num_samples"],
            logprob_chunk_size=h["logprob_chunk_size"],
        )


def unsaved_arguments(
    model: Any, tokenizer: Any, reward_funcs: Sequence[Any], accuracy_reward: Any, lora: Any
) -> list[str]:
    """GRPOModule's arguments to leave out of its saved hyper-parameters: objects (built models,
    callables, a ``LoraConfig``) cannot go into a checkpoint or a config file; names and plain values
    are kept, so the hyper-parameters alone can rebuild the module."""
    ignore = ["rollout_engine", "optimizer", "lr_scheduler"]
    ignore += [name for name, value in (("model", model), ("tokenizer", tokenizer)) if not _plain(value)]
    ignore += [] if all(isinstance(f, str) for f in reward_funcs) else ["reward_funcs"]
    ignore += [] if _plain(accuracy_reward) else ["accuracy_reward"]
    ignore += [] if lora is None or isinstance(lora, dict) else ["lora"]
    return ignore


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
