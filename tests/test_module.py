"""GRPOModule: the rollout cadence, the reference model, metric names, and start-up checks."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import (
    PromptsDataModule,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_model,
    tiny_tokenizer,
    weights,
)
from lightning.pytorch import Callback

import grpo_lightning.algorithm.update as update
from grpo_lightning.rollout.engines import FastRolloutEngine

DOCUMENTED_TRAIN_METRICS = [
    "train/loss", "train/reward", "train/reward_std", "train/rewards/char_code_mean/mean",
    "train/rewards/char_code_mean/std", "train/advantage_abs_mean", "train/frac_zero_std_groups", "train/kl",
    "train/entropy", "train/clip_ratio/low_mean", "train/clip_ratio/high_mean", "train/clip_ratio/region_mean",
    "train/completions/mean_length", "train/completions/min_length", "train/completions/max_length",
    "train/completions/clipped_ratio", "train/grad_norm", "train/lr", "perf/rollout_s", "perf/update_s",
    "perf/tokens_per_s",
]  # fmt: skip


class CountSteps(Callback):
    def __init__(self) -> None:
        self.training_steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.training_steps += 1


@pytest.fixture
def forward_log(monkeypatch):
    """Records every log-prob forward of the update loop: (grad enabled, model is the frozen reference)."""
    calls: list[tuple[bool, bool]] = []
    original = update.shared_prefix_logprobs

    def counting(model, *args, **kwargs):
        calls.append((torch.is_grad_enabled(), getattr(model, "_is_reference", False)))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(update, "shared_prefix_logprobs", counting)
    return calls


# N = 2 prompts x 4 generations = 8 rows per training step.
@pytest.mark.parametrize(
    ("num_iterations", "steps_per_rollout", "micro_batch_size", "beta", "reuse"),
    [(1, 1, None, 0.0, True), (2, 1, 4, 0.0, False), (2, 1, 4, 0.0, True), (1, 2, 2, 0.1, False),
     (2, 4, 1, 0.1, True)],
)  # fmt: skip
def test_cadence_counts_optimizer_scheduler_and_forward_passes(
    forward_log, num_iterations, steps_per_rollout, micro_batch_size, beta, reuse
):
    tok = tiny_tokenizer()
    module = make_module(
        tok, num_iterations=num_iterations, steps_per_rollout=steps_per_rollout, micro_batch_size=micro_batch_size,
        beta=beta, reuse_sampling_logprobs=reuse,
    )  # fmt: skip
    assert isinstance(module.rollout_engine, FastRolloutEngine)  # "auto": it reports sampling log-probs
    module.configure_model()
    if module.ref_model is not None:
        module.ref_model._is_reference = True
    k = num_iterations * steps_per_rollout  # optimizer steps per training step
    counter = CountSteps()
    trainer = make_trainer(max_steps=3 * k, callbacks=[counter])
    trainer.fit(module, datamodule=PromptsDataModule(tok, batch_size=2))

    assert counter.training_steps == 3
    assert trainer.global_step == 3 * k
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3 * k
    adam_steps = {int(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert adam_steps == {3 * k}
    micro = micro_batch_size or 8 // steps_per_rollout
    per_pass = 8 // micro
    train = sum(grad for grad, _ in forward_log)
    old = sum(not grad and not ref for grad, ref in forward_log)
    ref = sum(ref for _, ref in forward_log)
    assert train == 3 * num_iterations * per_pass
    # pi_old only when the policy moves before reuse, and then from the sampling pass unless told not to.
    assert old == (3 * per_pass if k > 1 and not reuse else 0)
    assert ref == (3 * per_pass if beta > 0 else 0)


def test_no_reference_model_when_beta_is_zero():
    module = make_module(beta=0.0)
    module.configure_model()
    assert module.ref_model is None
    assert not any(k.startswith("ref_model") for k in module.state_dict())


def test_reference_is_a_frozen_copy_outside_the_optimizer_when_beta_is_positive():
    tok = tiny_tokenizer()
    module = make_module(tok, beta=0.1)
    module.configure_model()
    start = weights(module)
    trainer = make_trainer(max_steps=3)
    trainer.fit(module, datamodule=PromptsDataModule(tok))
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not any(id(p) in optimized or p.requires_grad for p in module.ref_model.parameters())
    ref_state = module.ref_model.state_dict()
    assert all(torch.equal(ref_state[k], v) for k, v in start.items())  # still the starting weights
    assert any(
        not torch.equal(module.policy.state_dict()[k], v) for k, v in start.items()
    )  # the policy moved
    assert float(trainer.logged_metrics["train/kl"]) > 0


def test_lora_uses_the_base_model_as_reference_without_a_copy():
    tok = tiny_tokenizer()
    base = tiny_model(tok)
    n_base = sum(p.numel() for p in base.parameters())
    module = make_module(tok, model=base, beta=0.1, lora={"r": 4}, learning_rate=1e-2)
    trainer = make_trainer(max_steps=3)
    trainer.fit(module, datamodule=PromptsDataModule(tok))
    assert module.ref_model is None
    n_lora = sum(p.numel() for p in module.policy.parameters() if p.requires_grad)
    assert sum(p.numel() for p in module.parameters()) == n_base + n_lora  # no second copy of the base
    assert float(trainer.logged_metrics["train/kl"]) > 0  # policy (with adapter) vs base (adapter off)


def test_every_spec_metric_is_logged_and_reward_and_kl_reach_the_progress_bar():
    tok = tiny_tokenizer()
    module = make_module(tok, beta=0.1)
    trainer = make_trainer(max_steps=1)
    trainer.fit(module, datamodule=PromptsDataModule(tok))
    missing = [name for name in DOCUMENTED_TRAIN_METRICS if name not in trainer.logged_metrics]
    assert not missing
    assert {"train/reward", "train/kl"} <= set(trainer.progress_bar_metrics)
    lengths = [float(trainer.logged_metrics[f"train/completions/{s}_length"]) for s in ("min", "mean", "max")]
    assert 1 <= lengths[0] <= lengths[1] <= lengths[2] <= 8


def test_validation_and_test_metrics():
    tok = tiny_tokenizer()

    def exact(prompts, completions, answer, **kw):
        return [1.0 if c == a else 0.0 for c, a in zip(completions, answer, strict=True)]

    module = make_module(tok, reward_funcs=[exact], val_num_samples=3)
    trainer = make_trainer(limit_val_batches=None, limit_test_batches=None)
    dm = PromptsDataModule(tok, val_prompts=["1+1=", "2+3=", "4+4="])
    (val,) = trainer.validate(module, datamodule=dm)
    sampled = {"mean@3", "pass@1", "pass@2", "pass@3"}  # no maj@k: this reward extracts no answer
    assert set(val) == {"val/accuracy", "val/reward", "val/completions/mean_length"} | {f"val/{n}" for n in sampled}
    assert val["val/accuracy"] == 0.0 and val["val/reward"] == 0.0  # a random model does not add
    assert 1 <= val["val/completions/mean_length"] <= 8
    (test,) = trainer.test(module, dataloaders=dm.val_dataloader())
    assert set(test) == {name.replace("val/", "test/") for name in val}


def test_validation_accuracy_counts_correct_greedy_completions():
    tok = tiny_tokenizer()
    module = make_module(tok, reward_funcs=[lambda prompts, completions, **kw: [1.0] * len(completions)])
    (val,) = make_trainer(limit_val_batches=None).validate(module, datamodule=PromptsDataModule(tok))
    assert val["val/accuracy"] == 1.0 and val["val/reward"] == 1.0


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_update_does_not_depend_on_the_micro_batch_split(loss_type):
    tok = tiny_tokenizer()
    results = []
    for micro in (8, 2, 1):
        # SGD: the update scales with the gradient (Adam would hide a wrong normaliser).
        sgd = functools.partial(torch.optim.SGD, lr=1.0)
        module = make_module(
            tok, loss_type=loss_type, micro_batch_size=micro, beta=0.1, max_grad_norm=None, optimizer=sgd
        )
        make_trainer(max_steps=1).fit(module, datamodule=PromptsDataModule(tok))
        results.append(weights(module))
    for other in results[1:]:
        for k, v in results[0].items():
            torch.testing.assert_close(other[k], v, atol=1e-6, rtol=1e-5)
