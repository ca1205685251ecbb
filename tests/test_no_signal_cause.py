"""A step without a learning signal says why: truncation, rewards that never applied, equal rewards
(and their value), rewards too close to tell apart; and it does not trip PyTorch's scheduler warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import (
    PromptsDataModule,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_tokenizer,
)

from grpo_lightning.training.zero_signal import no_signal_cause

NAN = float("nan")


def gathered(total, per_func=None, truncated=None):
    total = torch.tensor(total, dtype=torch.float32)
    per_func = total.unsqueeze(1) if per_func is None else torch.tensor(per_func, dtype=torch.float32)
    truncated = torch.zeros(len(total)) if truncated is None else torch.tensor(truncated, dtype=torch.float32)
    return {
        "total": total,
        "per_func": per_func,
        "truncated": truncated,
        "advantages": torch.zeros(len(total)),
    }


def test_rewards_that_never_applied() -> None:
    cause, fix = no_signal_cause(gathered([NAN] * 4), ["accuracy"], 2, 8)
    assert cause.startswith("no reward applied to any completion")
    assert "equal" not in cause and "columns the rewards need" in fix


def test_no_prompt_with_two_rewards() -> None:
    cause, _ = no_signal_cause(gathered([1.0, NAN, NAN, 0.0]), ["accuracy"], 2, 8)
    assert cause.startswith("no prompt has two completions with a reward") and "2 of 4" in cause


def test_one_value_everywhere_names_it_and_each_reward() -> None:
    per_func = [[0.0, NAN], [0.0, NAN], [0.0, NAN], [0.0, NAN]]
    cause, fix = no_signal_cause(gathered([0.0] * 4, per_func), ["accuracy", "format"], 2, 8)
    assert cause == (
        "every completion scored the same total reward, 0 ('accuracy': 0 everywhere; 'format': None everywhere)"
    )
    assert "cannot tell these completions apart" in fix and "max_completion_length" not in fix


def test_equal_within_each_prompt_lists_the_values() -> None:
    cause, _ = no_signal_cause(gathered([1.0, 1.0, 0.5, 0.5]), ["accuracy"], 2, 8)
    assert cause == "the completions of each prompt scored equal rewards (totals per prompt: 0.5, 1)"


def test_every_completion_cut_off_names_max_completion_length() -> None:
    cause, fix = no_signal_cause(gathered([0.0] * 4, truncated=[1.0] * 4), ["accuracy"], 2, 1)
    assert "every completion was cut off at max_completion_length=1 tokens" in cause
    assert fix.startswith("Raise max_completion_length (now 1)")
    cause, fix = no_signal_cause(gathered([0.0] * 4, truncated=[1.0, 1.0, 0.0, 1.0]), ["accuracy"], 2, 3)
    assert cause.endswith("; 3 of 4 completions were cut off at max_completion_length=3")
    assert "Raise" not in fix


def test_rewards_that_differ_without_an_advantage() -> None:
    cause, fix = no_signal_cause(gathered([1.0, 1.5, 2.0, 2.0]), ["accuracy"], 2, 8)
    assert cause.startswith("the rewards differ, but too little") and "0.5" in cause
    assert fix.startswith("Rescale")


def zero(prompts, completions, **columns):
    return [0.0] * len(completions)


def nothing(prompts, completions, **columns):
    return [None] * len(completions)


def _fit_warnings(reward, **settings) -> list[str]:
    tok = tiny_tokenizer()
    module = make_module(tok, reward_funcs=[reward], **settings)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        make_trainer(max_steps=2).fit(module, datamodule=PromptsDataModule(tok))
    return [str(w.message) for w in record]


def test_a_run_cut_at_one_token_says_so_and_steps_the_scheduler_quietly() -> None:
    messages = _fit_warnings(zero, max_completion_length=1)
    # A skipped step is an optimizer step that left the weights alone: the scheduler after it is in order.
    assert not any("lr_scheduler.step()" in m for m in messages)
    skipped = [m for m in messages if m.startswith("A training step had no learning signal")]
    assert len(skipped) == 2, messages
    assert all("every completion scored the same total reward, 0" in m for m in skipped)
    assert all("max_completion_length=1" in m for m in skipped)


def test_a_reward_that_never_applies_is_named_as_the_cause() -> None:
    messages = _fit_warnings(nothing)
    skipped = [m for m in messages if m.startswith("A training step had no learning signal")]
    assert skipped and all("no reward applied to any completion" in m for m in skipped)
    assert not any("equal rewards" in m for m in messages)


def test_a_scheduler_stepped_before_its_optimizer_still_warns() -> None:
    # The skipped steps mark their own optimizer only: torch's check still catches the real mistake.
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    with pytest.warns(UserWarning, match=r"lr_scheduler.step\(\)` before `optimizer.step\(\)"):
        sched.step()
