"""The default micro-batch (``micro_batch_size=None``): as many rows as fit the step memory target."""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources

import pytest
import torch
from helpers import PromptsDataModule, make_module, make_trainer, one_thread, tiny_tokenizer  # noqa: F401
from torch import nn
from transformers import LlamaConfig, Qwen2Config

import grpo_lightning.algorithm.micro_batch as micro_batch
import grpo_lightning.algorithm.update as update
from grpo_lightning.algorithm.losses import LossConfig
from grpo_lightning.algorithm.micro_batch import (
    StepMemory,
    activation_bytes_per_token,
    default_micro_batch_size,
    training_state_bytes,
)
from grpo_lightning.training.settings_groups import Cadence


class Configured(nn.Module):
    """A module with a Hugging Face config and one parameter of ``dtype``: all the rule reads."""

    def __init__(self, config, dtype=torch.float32) -> None:
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.zeros(1, dtype=dtype))


def smollm2_135m() -> Configured:
    return Configured(LlamaConfig(num_hidden_layers=30, hidden_size=576, intermediate_size=1536))


def tiny_math() -> Configured:
    config = json.loads((resources.files("grpo_lightning") / "assets/tiny-math/config.json").read_text())
    return Configured(Qwen2Config(**config))


def test_bytes_per_token_follow_depth_width_dtype_and_checkpointing():
    model = smollm2_135m()
    assert activation_bytes_per_token(model, checkpointing=False) == 30 * 576 * 25 * 4
    assert activation_bytes_per_token(model, checkpointing=True) == (30 * 1 + 25) * 576 * 4
    half = Configured(model.config, dtype=torch.bfloat16)
    assert activation_bytes_per_token(half, checkpointing=False) == 30 * 576 * 25 * 2
    assert activation_bytes_per_token(nn.Linear(2, 2), checkpointing=False) is None  # no config


def test_the_largest_divisor_within_what_the_target_leaves_beside_the_state():
    # 10 bytes a token, 10 tokens a row: 100 bytes a row; 400 bytes of state.
    assert default_micro_batch_size(16, 10, 10, 400, target=2000) == 16
    assert default_micro_batch_size(16, 10, 10, 401, target=2000) == 8
    assert default_micro_batch_size(16, 10, 10, 400, target=1100) == 4  # 7 rows fit; 4 is the divisor below
    assert default_micro_batch_size(12, 10, 10, 400, target=1100) == 6
    assert default_micro_batch_size(16, 10, 10, 400, target=450) == 1  # not even one row fits: one row
    # The state alone is over the target: the activations may still take a tenth of it (4 rows).
    assert default_micro_batch_size(16, 10, 10, 4000, target=450) == 4
    assert default_micro_batch_size(16, 10, 10, 400, target=440) == 1  # 40 left, 40 a tenth: no row fits
    assert default_micro_batch_size(16, 10, None, 400, target=1) == 16  # unknown model: the whole mini-batch
    # A CUDA device's budget (its free memory's share) replaces target - state: 350 bytes fit 3 rows -> 2.
    assert default_micro_batch_size(16, 10, 10, 4000, target=450, budget=350) == 2
    assert default_micro_batch_size(16, 10, 10, 4000, budget=10**9) == 16


def test_the_device_budget_is_a_share_of_a_cuda_devices_free_memory(monkeypatch):
    assert micro_batch.device_budget(torch.device("cpu")) is None  # the host target applies
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10_000, 80_000))
    assert micro_batch.device_budget(torch.device("cuda", 0)) == int(10_000 * micro_batch.CUDA_FREE_SHARE)


def test_training_state_counts_four_copies_of_what_trains_and_one_of_what_does_not():
    policy, reference = nn.Linear(10, 10), nn.Linear(10, 10)  # 110 parameters each, float32
    assert training_state_bytes(policy, None) == 4 * 110 * 4
    assert training_state_bytes(policy, reference) == 4 * 110 * 4 + 110 * 4
    policy.bias.requires_grad_(False)
    assert training_state_bytes(policy, None) == 4 * 100 * 4 + 10 * 4


def smollm2_state(lora: bool = False) -> int:
    params = 134_515_008  # SmolLM2-135M-Instruct, tied embeddings
    return params * 4 if lora else 4 * params * 4


def test_the_quickstart_keeps_one_micro_batch_and_a_135m_model_is_split():
    # The quickstart: 16 prompts x 8 completions, prompts of at most 36 tokens, completions of 48.
    model = tiny_math()
    tiny = activation_bytes_per_token(model, checkpointing=False)
    state = 4 * 2_400_000 * 4
    assert default_micro_batch_size(128, 36 + 48, tiny, state) == 128
    # The real-model step of benchmarks/bench_memory.py: 4 x 4 rows of 40 + 96 tokens, float32.
    smol = activation_bytes_per_token(smollm2_135m(), checkpointing=False)
    assert default_micro_batch_size(16, 40 + 96, smol, smollm2_state()) == 1
    # LoRA trains a few adapters: the frozen base leaves room for 4 rows.
    assert default_micro_batch_size(16, 40 + 96, smol, smollm2_state(lora=True)) == 4
    # Two layers of Qwen2.5-0.5B's shape (152k x 896 tied embeddings), beta > 0: 3.3 GB of state,
    # more than the target, but a row of 30 + 64 tokens takes 17 MB: 16 rows, not 1.
    two_layers = Configured(Qwen2Config(num_hidden_layers=2, hidden_size=896))
    params = 151_936 * 896 + 2 * (2 * 896 * 896 + 2 * 896 * 128 + 3 * 896 * 4864)
    state = 4 * params * 4 + params * 4
    per_token = activation_bytes_per_token(two_layers, checkpointing=False)
    assert state > micro_batch.STEP_MEMORY_TARGET
    assert default_micro_batch_size(32, 30 + 64, per_token, state) == 16
    # Activation checkpointing keeps each layer's input and one layer's activations: 8 rows fit.
    checkpointed = activation_bytes_per_token(smollm2_135m(), checkpointing=True)
    assert default_micro_batch_size(16, 40 + 96, checkpointed, smollm2_state()) == 8


def test_cadence_layout_uses_the_rule_only_without_micro_batch_size():
    smol = StepMemory(
        136, activation_bytes_per_token(smollm2_135m(), checkpointing=False), smollm2_state(lora=True)
    )
    assert Cadence(num_generations=4).layout(4).micro_batch_size == 16  # no rollout yet: whole mini-batch
    assert Cadence(num_generations=4).layout(4, smol).micro_batch_size == 4
    assert Cadence(num_generations=4, micro_batch_size=8).layout(4, smol).micro_batch_size == 8
    halves = Cadence(num_generations=4, steps_per_rollout=2).layout(4, smol)
    assert (halves.mini_batch_size, halves.micro_batch_size) == (8, 4)


@pytest.mark.parametrize(("target", "per_step"), [(None, 1), (1, 8)])
def test_the_update_runs_the_chosen_micro_batches(monkeypatch, target, per_step):
    """A target no row fits cuts each step's 8 rows into 8 forward passes; the default target keeps one."""
    if target is not None:
        monkeypatch.setattr(micro_batch, "STEP_MEMORY_TARGET", target)
        monkeypatch.setattr(micro_batch, "STATE_SHARE", 0.0)
    calls = []
    original = update.shared_prefix_logprobs

    def counting(model, input_ids, *args, **kwargs):
        if torch.is_grad_enabled():
            calls.append(len(input_ids))
        return original(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(update, "shared_prefix_logprobs", counting)
    tok = tiny_tokenizer()
    module = make_module(tok, beta=0.1)  # beta > 0: every row takes the backward pass
    make_trainer(max_steps=2).fit(module, datamodule=PromptsDataModule(tok, batch_size=2))
    assert calls == [8 // per_step] * (2 * per_step)


class TwoRanks:
    """The collectives of rank 0 of two, whose other rank's rollout is ``other_width`` tokens wide (and
    whose device budget is ``other_budget``, -1 for none)."""

    world_size, rank, device = 2, 0, torch.device("cpu")

    def __init__(self, other_width: int, other_budget: int = -1) -> None:
        self.other = torch.tensor([[other_width, other_budget]])

    def all_gather(self, tensors):
        return {k: torch.cat([v, self.other.to(v.dtype)]) for k, v in tensors.items()}


def test_every_rank_chooses_from_the_widest_rollout():
    # FSDP gathers weights in every forward: ranks must agree on the number of micro-batches.
    from test_training_step import sampled, training_step

    sampler, rollout = sampled()
    step, _ = training_step(sampler)
    rows = rollout.scored.rollout
    width = rows.prompt_ids.shape[1] + rows.completion_ids.shape[1]
    assert step._step_memory(rows).row_tokens == width
    step.collectives = TwoRanks(width + 50)
    memory = step._step_memory(rows)
    assert memory.row_tokens == width + 50
    assert memory.state_bytes == training_state_bytes(sampler.policy, None) and memory.budget is None
    assert training_step(sampler, micro_batch_size=2)[0]._step_memory(rows) is None  # set: no rule


def test_bnpo_keeps_the_whole_mini_batch_whose_split_would_change_its_loss():
    from test_training_step import sampled, training_step

    sampler, rollout = sampled()
    step, _ = training_step(sampler)
    step.settings = replace(step.settings, loss=LossConfig(loss_type="bnpo"))
    assert step._step_memory(rollout.scored.rollout) is None


def test_ranks_agree_on_the_smallest_device_budget(monkeypatch):
    from test_training_step import sampled, training_step

    import grpo_lightning.training.step as step_module

    sampler, rollout = sampled()
    step, _ = training_step(sampler)
    monkeypatch.setattr(step_module, "device_budget", lambda device: 500)  # as on a CUDA device
    step.collectives = TwoRanks(1, other_budget=300)
    assert step._step_memory(rollout.scored.rollout).budget == 300
    step.collectives = TwoRanks(1, other_budget=900)
    assert step._step_memory(rollout.scored.rollout).budget == 500
