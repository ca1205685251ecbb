"""GRPOModule's settings as typed groups, each checked once when built; every message names the
setting to change.

GRPOModule's flat, TRL-named arguments are its public surface (YAML ``model.beta``, CLI
``--model.beta``, keyword arguments) and what its checkpoints save. :meth:`Settings.from_arguments`
hands each argument to the one group field of the same name (the groups: :mod:`.settings_groups`,
:class:`~grpo_lightning.algorithm.losses.LossConfig`, :class:`~grpo_lightning.rollout.engine.SamplingConfig`,
:class:`~grpo_lightning.training.optim.OptimizerConfig`), and refuses a field without an argument and
an argument without a field. Everything after construction reads ``module.settings.<group>.<field>``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from grpo_lightning.algorithm.losses import LossConfig
from grpo_lightning.rollout.engine import SamplingConfig
from grpo_lightning.training.optim import OptimizerConfig
from grpo_lightning.training.settings_groups import (
    Cadence,
    EvalSettings,
    LoggingSettings,
    ModelSettings,
    RefSync,
    RewardSettings,
)

T = TypeVar("T")

#: GRPOModule's arguments that are objects, not settings: the model, tokenizer, reward and accuracy
#: functions, optimizer and scheduler callables, the LoRA config and the rollout engine are built or
#: resolved by the module itself; ``lora``, ``optimizer`` and ``lr_scheduler`` only tell the settings
#: whether they are given (``Settings.lora``, ``OptimizerConfig.custom_*``).
OBJECT_ARGUMENTS = frozenset(
    {
        "model",
        "tokenizer",
        "reward_funcs",
        "accuracy_reward",
        "optimizer",
        "lr_scheduler",
        "lora",
        "rollout_engine",
    }
)


@dataclass(frozen=True)
class Settings:
    """GRPOModule's settings, grouped and checked once (built from its arguments by :meth:`from_arguments`)."""

    loss: LossConfig
    """The objective: advantage scaling, clipping, KL weight, aggregation, truncated completions."""
    sampling: SamplingConfig
    """How completions are sampled, and the base of their seeds."""
    cadence: Cadence
    """Completions per prompt, passes, optimizer steps and micro-batches per rollout, dynamic sampling."""
    optimizer: OptimizerConfig
    """The default optimizer and schedule, gradient clipping."""
    ref_sync: RefSync
    """TR-DPO reference mixing."""
    rewards: RewardSettings
    """Reward weights, worker processes, time limit and error handling."""
    evaluation: EvalSettings
    """Validation samples per prompt and the accuracy threshold."""
    logging: LoggingSettings
    """Sample-completion tables."""
    model: ModelSettings
    """Loading and running the policy: ``from_pretrained`` arguments, dropout, memory trade-offs."""
    lora: bool = False
    """A LoRA adapter is trained (its reference is the base model with the adapter off)."""

    def __post_init__(self) -> None:
        if self.ref_sync.sync_ref_model:
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

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> Settings:
        """Group GRPOModule's ``arguments`` (every ``__init__`` argument by name). Each setting goes to
        the one group field of its name; the objects (:data:`OBJECT_ARGUMENTS`) are left to the module."""
        settings = {name: value for name, value in arguments.items() if name not in OBJECT_ARGUMENTS}
        # NaN passes every comparison (``nan < 0`` is False), so non-finite numbers are refused first.
        for name, value in settings.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name}={value} must be a finite number.")
        used: set[str] = set()
        sampling = _group(SamplingConfig, settings, used, do_sample=True)
        built = cls(
            loss=_group(LossConfig, settings, used, max_completion_length=sampling.max_completion_length),
            sampling=sampling,
            cadence=_group(Cadence, settings, used),
            optimizer=_group(
                OptimizerConfig,
                settings,
                used,
                custom_optimizer=arguments["optimizer"] is not None,
                custom_lr_scheduler=arguments["lr_scheduler"] is not None,
            ),
            ref_sync=_group(RefSync, settings, used),
            rewards=_group(RewardSettings, settings, used),
            evaluation=_group(EvalSettings, settings, used),
            logging=_group(LoggingSettings, settings, used),
            model=_group(ModelSettings, settings, used),
            lora=arguments["lora"] is not None,
        )
        if stray := sorted(settings.keys() - used):
            raise TypeError(
                f"GRPOModule argument(s) {stray} belong to no settings group: add each as a field of the group it "
                "configures (grpo_lightning.training.settings_groups), or to OBJECT_ARGUMENTS if it is an object."
            )
        return built


def _group(cls: type[T], settings: Mapping[str, Any], used: set[str], **derived: Any) -> T:
    """``cls`` built from the ``settings`` of its field names, and the ``derived`` fields that are
    not arguments; a field that is neither is an error (never a silent default). Adds the names
    taken to ``used``."""
    names = [f.name for f in fields(cls) if f.name not in derived]  # type: ignore[arg-type]
    if missing := [name for name in names if name not in settings]:
        raise TypeError(
            f"{cls.__name__} field(s) {missing} have no GRPOModule argument: add each to GRPOModule.__init__ "
            "with the field's default, or derive it in Settings.from_arguments."
        )
    used.update(names)
    return cls(**{name: settings[name] for name in names}, **derived)


def settings_of(module: Any) -> Settings | None:
    """``module``'s GRPO settings; None for a LightningModule that is not a GRPOModule (callbacks
    and progress bars also run with other modules: one optimizer step per batch, one sample)."""
    settings = getattr(module, "settings", None)
    return settings if isinstance(settings, Settings) else None


def optimizer_steps_per_batch(module: Any) -> int:
    """Optimizer steps one training step of ``module`` makes: ``Cadence.optimizer_steps``, or 1
    for a module that is not a GRPOModule."""
    settings = settings_of(module)
    return settings.cadence.optimizer_steps if settings is not None else 1


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
