"""GRPOModule's settings: grouped into typed configs from the flat arguments, checked once at
construction, and refused when an optimizer / scheduler callable would ignore them. (That each
argument is exactly one group field: ``test_settings_contract.py``.)"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from helpers import PromptsDataModule, make_module, make_trainer, one_thread, tiny_tokenizer  # noqa: F401

import grpo_lightning.algorithm.losses as losses
from grpo_lightning.algorithm.losses import LossConfig, grpo_loss
from grpo_lightning.module import GRPOModule
from grpo_lightning.rollout.engine import SamplingConfig
from grpo_lightning.training.callbacks import RefModelSync
from grpo_lightning.training.optim import OptimizerConfig
from grpo_lightning.training.settings_groups import Cadence, RefSync

SGD = functools.partial(torch.optim.SGD, lr=0.1)


def test_the_flat_arguments_are_grouped_and_saved_unchanged():
    module = make_module(
        loss_type="grpo", epsilon_high=0.28, beta=0.1, scale_rewards="batch", num_iterations=2, steps_per_rollout=2,
        micro_batch_size=2, sync_ref_model=True, ref_model_sync_steps=3, temperature=0.7, top_k=None, seed=7,
    )  # fmt: skip
    s = module.settings
    assert s.loss == LossConfig(
        loss_type="grpo", epsilon_high=0.28, beta=0.1, scale_rewards="batch", max_completion_length=8
    )
    assert s.loss.clip_high == 0.28
    assert s.cadence == Cadence(num_generations=4, num_iterations=2, steps_per_rollout=2, micro_batch_size=2)
    assert s.cadence.optimizer_steps == 4 and s.cadence.policy_moves_before_reuse
    assert s.optimizer == OptimizerConfig(learning_rate=1e-3, warmup_steps=0)
    assert s.ref_sync == RefSync(sync_ref_model=True, ref_model_sync_steps=3)
    assert s.sampling.temperature == 0.7 and s.sampling.top_k is None and module.sampling is s.sampling
    assert s.sampling.seed == 7 and module.base_seed() == 7
    # The checkpoint's hyper-parameters are still the flat arguments, by their names.
    assert module.hparams.loss_type == "grpo" and module.hparams.top_k is None
    assert "settings" not in module.hparams and "loss" not in module.hparams
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.loss.beta = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"optimizer": SGD, "learning_rate": 1e-3}, "learning_rate=0.001 would be ignored: learning_rate only configures the built-in AdamW"),
        ({"optimizer": SGD, "weight_decay": 0.1}, "weight_decay=0.1 would be ignored"),
        (
            {"optimizer": SGD, "learning_rate": 1e-3, "weight_decay": 0.1},
            "learning_rate=0.001 and weight_decay=0.1 would be ignored",
        ),
        (
            {"lr_scheduler": functools.partial(torch.optim.lr_scheduler.ConstantLR), "warmup_steps": 0},
            "warmup_steps=0 would be ignored: warmup_steps only configures the built-in linear warmup, and an "
            "lr_scheduler callable was given",
        ),
    ],
)
def test_a_setting_that_a_callable_would_ignore_is_refused_with_the_fix(settings, message):
    with pytest.raises(ValueError, match=message) as info:
        GRPOModule(make_module().policy, tokenizer=tiny_tokenizer(), reward_funcs=["format_reward"], **settings)
    assert "drop" in str(info.value) and "default" in str(info.value)


def test_settings_that_still_apply_next_to_a_callable_are_accepted():
    tok = tiny_tokenizer()
    base = {"reward_funcs": ["format_reward"], "tokenizer": tok}
    model = make_module(tok).policy
    GRPOModule(model, optimizer=SGD, **base)  # defaults: nothing ignored
    GRPOModule(model, optimizer=SGD, warmup_steps=0, **base)  # the default scheduler still warms up
    scheduler = functools.partial(torch.optim.lr_scheduler.ConstantLR)
    GRPOModule(model, lr_scheduler=scheduler, learning_rate=1e-3, weight_decay=0.1, **base)  # default AdamW


def test_ref_model_sync_checks_its_settings_with_the_modules_messages():
    with pytest.raises(ValueError, match=r"ref_model_mixup_alpha=2.0 must be in \(0, 1\]"):
        RefModelSync(alpha=2.0)
    with pytest.raises(ValueError, match="ref_model_sync_steps=0 must be >= 1"):
        RefModelSync(sync_steps=0)
    with pytest.raises(ValueError, match="ref_model_sync_steps=0 must be >= 1"):
        make_module(sync_ref_model=True, beta=0.1, ref_model_sync_steps=0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"top_p": 0.0}, r"top_p=0.0 must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k=-1 must be >= 0"),
        ({"max_completion_length": 0}, "max_completion_length=0 must be >= 1"),
    ],
)
def test_sampling_settings_are_checked_when_built(settings, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**settings)
    with pytest.raises(ValueError, match=message):
        make_module(**settings)


def test_cadence_checks():
    with pytest.raises(ValueError, match="num_iterations=0 must be >= 1"):
        Cadence(num_iterations=0)
    with pytest.raises(ValueError, match="max_dynamic_sampling_rounds=-1 must be >= 0"):
        Cadence(max_dynamic_sampling_rounds=-1)
    with pytest.raises(ValueError, match=r"max_grad_norm=0\.0 must be > 0"):
        OptimizerConfig(max_grad_norm=0.0)


def test_no_setting_is_checked_again_inside_the_update(monkeypatch):
    config = LossConfig(loss_type="grpo", importance_sampling_level="sequence", max_completion_length=4)
    tok = tiny_tokenizer()
    module = make_module(tok, loss_type="bnpo", importance_sampling_level="sequence", micro_batch_size=2)

    def fail(*args, **kwargs):
        raise AssertionError("a setting was checked again after construction")

    monkeypatch.setattr(losses, "check_choice", fail)
    logp = torch.zeros(2, 3, requires_grad=True)
    grpo_loss(logp, None, None, torch.tensor([1.0, -1.0]), torch.ones(2, 3), config)
    make_trainer(max_steps=1).fit(module, datamodule=PromptsDataModule(tok))
    assert module.trainer.global_step == 1
