"""Every GRPOModule setting is defined once: each ``__init__`` argument that is a setting is exactly
one field of one typed group of ``module.settings``, by the same name, default and annotation; every
value is checked when the module is built, with a message that names the setting."""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from types import SimpleNamespace

import pytest
from helpers import make_module
from lightning.pytorch.demos.boring_classes import BoringModel

from grpo_lightning.algorithm.losses import LossConfig
from grpo_lightning.module import GRPOModule
from grpo_lightning.rollout.engine import SamplingConfig
from grpo_lightning.training.callbacks import _crossed
from grpo_lightning.training.optim import OptimizerConfig
from grpo_lightning.training.settings import (
    OBJECT_ARGUMENTS,
    Settings,
    optimizer_steps_per_batch,
    settings_of,
)
from grpo_lightning.training.settings_groups import (
    EvalSettings,
    LoggingSettings,
    ModelSettings,
    RewardSettings,
)

#: The arguments that are objects, not settings: built or resolved by the module (models, tokenizer,
#: functions, callables, a LoraConfig, an engine), so they have no typed value to check or group.
OBJECTS = {
    "model",
    "tokenizer",
    "reward_funcs",
    "accuracy_reward",
    "optimizer",
    "lr_scheduler",
    "lora",
    "rollout_engine",
}
#: Group fields that are not arguments, and where their value comes from.
DERIVED = {
    ("LossConfig", "max_completion_length"): "the sampling length limit (dr_grpo divides by it)",
    ("SamplingConfig", "do_sample"): "True; validation samples greedily from a copy with do_sample=False",
    ("OptimizerConfig", "custom_optimizer"): "whether the optimizer callable is given",
    ("OptimizerConfig", "custom_lr_scheduler"): "whether the lr_scheduler callable is given",
}
PARAMETERS = {n: p for n, p in inspect.signature(GRPOModule.__init__).parameters.items() if n != "self"}
ANNOTATIONS = typing.get_type_hints(GRPOModule.__init__)
GROUPS = [hint for name, hint in typing.get_type_hints(Settings).items() if dataclasses.is_dataclass(hint)]


def group_fields() -> list[tuple[type, dataclasses.Field]]:
    return [
        (group, f)
        for group in GROUPS
        for f in dataclasses.fields(group)
        if (group.__name__, f.name) not in DERIVED
    ]


def test_the_objects_are_the_modules_own_list():
    assert OBJECTS == OBJECT_ARGUMENTS and PARAMETERS.keys() >= OBJECTS


def test_every_group_of_settings_is_checked_here():
    assert {g.__name__ for g in GROUPS} == {
        "LossConfig", "SamplingConfig", "Cadence", "OptimizerConfig", "RefSync",
        "RewardSettings", "EvalSettings", "LoggingSettings", "ModelSettings",
    }  # fmt: skip
    for group, name in DERIVED:
        assert name in {f.name for g in GROUPS if g.__name__ == group for f in dataclasses.fields(g)}


def test_each_setting_argument_is_exactly_one_group_field():
    owners: dict[str, list[str]] = {}
    for group, f in group_fields():
        owners.setdefault(f.name, []).append(group.__name__)
    settings = PARAMETERS.keys() - OBJECTS
    assert sorted(settings - owners.keys()) == [], "arguments in no group"
    assert sorted(owners.keys() - settings) == [], "group fields that are no argument"
    assert {name: groups for name, groups in owners.items() if len(groups) > 1} == {}, "in two groups"


@pytest.mark.parametrize(
    ("group", "field"), group_fields(), ids=lambda x: getattr(x, "name", getattr(x, "__name__", ""))
)
def test_a_group_field_has_its_arguments_default_and_type(group, field):
    parameter = PARAMETERS[field.name]
    assert field.default is not dataclasses.MISSING, "a setting needs a default (the argument's)"
    assert field.default == parameter.default
    assert typing.get_type_hints(group)[field.name] == ANNOTATIONS[field.name]
    assert field.metadata == {} and field.default_factory is dataclasses.MISSING


def arguments(**changes):
    """GRPOModule's arguments with their defaults (objects: what a plain run passes)."""
    given = {name: p.default for name, p in PARAMETERS.items()} | {"model": "builtin:tiny-math"}
    return given | changes


def test_the_settings_built_from_the_default_arguments_are_the_groups_defaults():
    settings = Settings.from_arguments(arguments())
    assert settings.rewards == RewardSettings() and settings.evaluation == EvalSettings()
    assert settings.logging == LoggingSettings() and settings.model == ModelSettings()
    assert settings.sampling == SamplingConfig() and settings.optimizer == OptimizerConfig()
    assert settings.loss == LossConfig(max_completion_length=256) and settings.lora is False


def test_a_group_field_without_an_argument_and_an_argument_without_a_group_are_refused():
    missing = arguments()
    del missing["accuracy_threshold"]
    with pytest.raises(
        TypeError, match=r"EvalSettings field\(s\) \['accuracy_threshold'\] have no GRPOModule argument"
    ):
        Settings.from_arguments(missing)
    with pytest.raises(TypeError, match=r"argument\(s\) \['stray'\] belong to no settings group"):
        Settings.from_arguments(arguments(stray=1))


def test_each_argument_reaches_its_field():
    module = make_module(
        reward_workers=0, accuracy_threshold=0.5, val_num_samples=3, log_completions_every_n_steps=7,
        num_completions_to_log=2, logprob_chunk_size=16, gradient_checkpointing=True, disable_dropout=False,
        model_kwargs={"revision": "main"}, mask_truncated_completions=True, reward_weights=[2.0], seed=5,
        generation_kwargs={"min_new_tokens": 1}, weight_decay=0.1, max_grad_norm=None,
    )  # fmt: skip
    s = module.settings
    assert s.evaluation == EvalSettings(val_num_samples=3, accuracy_threshold=0.5)
    assert s.logging == LoggingSettings(log_completions_every_n_steps=7, num_completions_to_log=2)
    assert s.model == ModelSettings({"revision": "main"}, False, True, 16)
    assert s.rewards == RewardSettings(reward_weights=[2.0])
    assert s.loss.mask_truncated_completions and s.sampling.seed == 5
    assert s.sampling.generation_kwargs == {"min_new_tokens": 1}
    assert s.optimizer.weight_decay == 0.1 and s.optimizer.max_grad_norm is None


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("warmup_steps", -1, r"warmup_steps=-1 must be >= 0 \(0 = no warmup\)"),
        ("learning_rate", 0.0, "learning_rate=0.0 must be a finite number > 0"),
        ("learning_rate", -1e-5, "learning_rate=-1e-05 must be a finite number > 0"),
        ("learning_rate", math.inf, "learning_rate=inf must be a finite number"),
        ("weight_decay", -0.1, "weight_decay=-0.1 must be a finite number >= 0"),
        ("max_grad_norm", 0.0, r"max_grad_norm=0.0 must be > 0, or None"),
        ("reward_workers", -1, r"reward_workers=-1 must be >= 0 \(0 = score in the training process\)"),
        ("reward_timeout", 0.0, "reward_timeout=0.0 must be > 0 seconds, or None"),
        ("accuracy_threshold", math.nan, "accuracy_threshold=nan must be a finite number"),
        ("val_num_samples", 0, "val_num_samples=0 must be >= 1"),
        ("log_completions_every_n_steps", -1, "log_completions_every_n_steps=-1 must be >= 0"),
        ("num_completions_to_log", 0, "num_completions_to_log=0 must be >= 1"),
        ("logprob_chunk_size", 0, "logprob_chunk_size=0 must be >= 1"),
        ("ref_model_mixup_alpha", 0.0, r"ref_model_mixup_alpha=0.0 must be in \(0, 1\]"),
        ("num_generations", 1, "num_generations=1: GRPO compares completions"),
    ],
)
def test_a_value_that_cannot_be_is_refused_at_construction_naming_the_setting(setting, value, message):
    with pytest.raises(ValueError, match=message):
        make_module(**{setting: value})


@pytest.mark.parametrize(
    ("group", "setting", "value", "message"),
    [
        (OptimizerConfig, "warmup_steps", -1, "warmup_steps=-1 must be >= 0"),
        (OptimizerConfig, "learning_rate", math.inf, "learning_rate=inf must be a finite number > 0"),
        (RewardSettings, "reward_timeout", -2.0, "reward_timeout=-2.0 must be > 0 seconds"),
        (EvalSettings, "accuracy_threshold", math.inf, "accuracy_threshold=inf must be a finite number"),
        (LoggingSettings, "num_completions_to_log", 0, "num_completions_to_log=0 must be >= 1"),
        (ModelSettings, "logprob_chunk_size", -4, "logprob_chunk_size=-4 must be >= 1"),
    ],
)
def test_each_group_checks_its_own_fields(group, setting, value, message):
    with pytest.raises(ValueError, match=message):
        group(**{setting: value})


def test_callbacks_and_progress_count_optimizer_steps_from_the_settings():
    module = make_module(num_iterations=2, steps_per_rollout=3)
    module.hparams["num_iterations"] = 5  # the saved arguments are never read again
    assert optimizer_steps_per_batch(module) == 6 and settings_of(module) is module.settings
    # A training step from optimizer step 6 to 12 crosses 8, not 13.
    assert _crossed(SimpleNamespace(global_step=12), module, 8)
    assert not _crossed(SimpleNamespace(global_step=12), module, 13)
    plain = BoringModel()  # callbacks and progress bars also run with modules that are not GRPOModules
    assert optimizer_steps_per_batch(plain) == 1 and settings_of(plain) is None
