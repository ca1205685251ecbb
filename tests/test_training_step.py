"""The update and the rollout source without a Trainer: a tiny model, one process, a plain torch optimizer."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from helpers import assert_same_fields, char_code_mean, one_thread, prompt_batch, tiny_sampler  # noqa: F401
from torch.testing import assert_close

from grpo_lightning.algorithm.losses import LossConfig
from grpo_lightning.rewards.scorer import RewardScorer
from grpo_lightning.rollout.seeds import SeedStream, stream_seed
from grpo_lightning.rollout.source import StepRollout, SyncRolloutSource
from grpo_lightning.training.collectives import SingleProcess
from grpo_lightning.training.optim import OptimizerConfig
from grpo_lightning.training.rollout_stats import global_advantages
from grpo_lightning.training.settings import Settings
from grpo_lightning.training.settings_groups import (
    Cadence,
    EvalSettings,
    LoggingSettings,
    ModelSettings,
    RefSync,
    RewardSettings,
)
from grpo_lightning.training.step import TrainingStep
from grpo_lightning.training.stepping import TorchStepping

G = 4
LR = 0.5


def seeds(step: int):
    return partial(stream_seed, 0, 0, step)


def sampled(version: int = 0):
    """A sampler over a tiny random policy and its rollout of two prompts at policy version ``version``."""
    sampler = tiny_sampler(RewardScorer([char_code_mean]), num_generations=G)
    source = SyncRolloutSource(sampler, lambda: version, seeds)
    return sampler, source.next(prompt_batch(sampler.tokenizer))


def training_step(sampler, **cadence) -> tuple[TrainingStep, torch.optim.Optimizer]:
    policy = sampler.policy
    settings = Settings(
        loss=LossConfig(),  # dapo: the loss is a token mean over the mini-batch
        cadence=Cadence(num_generations=G, **cadence),
        optimizer=OptimizerConfig(max_grad_norm=None),
        sampling=sampler.sampling,
        ref_sync=RefSync(),
        rewards=RewardSettings(),
        evaluation=EvalSettings(),
        logging=LoggingSettings(),
        model=ModelSettings(),
    )
    optimizer = torch.optim.SGD(policy.parameters(), lr=LR)
    step = TrainingStep(
        policy, None, settings, SingleProcess(), TorchStepping(optimizer), seeds, sampler.scorer.names
    )
    return step, optimizer


def reference_update(policy: torch.nn.Module, rollout: StepRollout, advantages: torch.Tensor) -> None:
    """One SGD step of the on-policy GRPO loss written out: ratio exp(logp - logp.detach()) is 1, so
    the clipped term is -A * ratio, and dapo averages it over every completion token of the batch."""
    r = rollout.scored.rollout
    logits = policy(input_ids=r.input_ids, attention_mask=r.attention_mask).logits.float()
    width = r.prompt_ids.shape[1]
    # The logits at position i predict token i + 1: those of the completion start at the prompt's last token.
    logp = logits[:, width - 1 : -1].log_softmax(-1).gather(-1, r.completion_ids.unsqueeze(-1)).squeeze(-1)
    mask = r.completion_mask.float()
    ratio = torch.exp(logp - logp.detach())
    loss = -(advantages.unsqueeze(1) * ratio * mask).sum() / mask.sum()
    loss.backward()
    with torch.no_grad():
        for p in policy.parameters():
            if p.grad is not None:
                p -= LR * p.grad


def test_one_update_without_a_trainer_moves_the_weights_as_the_written_out_loss_says():
    sampler, rollout = sampled()
    scorer = sampler.scorer
    advantages, gathered = global_advantages(rollout.scored, G, "group", SingleProcess(), scorer)
    assert bool(advantages.ne(0).any())  # a learning signal, so the update runs
    expected = copy.deepcopy(sampler.policy)
    reference_update(expected, rollout, advantages)
    start = {k: v.clone() for k, v in sampler.policy.state_dict().items()}

    step, _ = training_step(sampler)
    losses, skipped = step.run(rollout, advantages, gathered, 0)

    assert not skipped and torch.isfinite(losses["loss"]) and float(losses["grad_norm"]) > 0
    got, want = sampler.policy.state_dict(), expected.state_dict()
    moved = [k for k in start if not torch.equal(got[k], start[k])]
    assert moved, "the update left every weight as it was"
    for key in start:
        assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)


def test_several_micro_batches_give_the_same_update():
    # Gradient accumulation over micro-batches (no sync context on one process) changes nothing.
    sampler, rollout = sampled()
    advantages, gathered = global_advantages(rollout.scored, G, "group", SingleProcess(), sampler.scorer)
    whole, split = sampler.policy, copy.deepcopy(sampler.policy)
    training_step(sampler)[0].run(rollout, advantages, gathered, 0)
    sampler.policy = split
    training_step(sampler, micro_batch_size=2)[0].run(rollout, advantages, gathered, 0)
    for (key, a), b in zip(whole.state_dict().items(), split.state_dict().values(), strict=True):
        assert_close(a, b, rtol=1e-5, atol=1e-7, msg=key)


def test_the_update_refuses_a_rollout_of_an_older_policy():
    sampler, rollout = sampled(version=3)
    advantages, _ = global_advantages(rollout.scored, G, "group", SingleProcess(), sampler.scorer)
    step, _ = training_step(sampler)
    before = {k: v.clone() for k, v in sampler.policy.state_dict().items()}
    with pytest.raises(ValueError, match="policy of optimizer step 3, and the update is at step 5"):
        step.update(rollout, advantages, 5)
    assert all(torch.equal(v, before[k]) for k, v in sampler.policy.state_dict().items())


def test_the_synchronous_source_tags_each_rollout_with_the_policy_version_that_sampled_it():
    sampler = tiny_sampler(RewardScorer([char_code_mean]), num_generations=G)
    batch = prompt_batch(sampler.tokenizer)
    steps = iter([0, 3, 7])  # the optimizer steps taken before each training step
    source = SyncRolloutSource(sampler, lambda: next(steps), seeds)
    for version in (0, 3, 7):
        rollout = source.next(batch)
        assert rollout.policy_version == version and rollout.refill_rounds == 0
        # Sampled with that step's rollout seed: a resumed run at that step samples the same completions.
        same = sampler.rollout(batch, stream_seed(0, 0, version, SeedStream.ROLLOUT))
        assert_same_fields(rollout.scored.rollout, same.rollout, ["completion_ids", "completion_mask"])


def test_a_step_without_signal_leaves_the_weights_and_steps_the_scheduler_without_a_trainer():
    # Every advantage 0 (as when each group's completions scored the same): the step is skipped, the
    # SGD momentum buffers stay empty, and the scheduler still counts each optimizer step.
    sampler, rollout = sampled()
    advantages, gathered = global_advantages(rollout.scored, G, "group", SingleProcess(), sampler.scorer)
    gathered = {**gathered, "advantages": torch.zeros_like(gathered["advantages"])}
    optimizer = torch.optim.SGD(sampler.policy.parameters(), lr=LR, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: 1.0 / (n + 1))
    step, _ = training_step(sampler, steps_per_rollout=2)
    step.stepping = TorchStepping(optimizer, scheduler)
    before = {k: v.clone() for k, v in sampler.policy.state_dict().items()}

    with pytest.warns(UserWarning, match="no learning signal"):
        losses, skipped = step.run(rollout, torch.zeros_like(advantages), gathered, 0)

    assert skipped and float(losses["loss"]) == 0.0
    assert all(torch.equal(v, before[k]) for k, v in sampler.policy.state_dict().items())
    assert not optimizer.state  # the optimizer never ran
    assert scheduler.last_epoch == 2 and optimizer.param_groups[0]["lr"] == LR / 3  # two steps counted
