"""Rewards in worker processes: a hang or a crash is reported by name and sample, and never stalls."""

from __future__ import annotations

import math

import pytest
import torch
from faulty_rewards import crashy, picky, sleepy

import grpo_lightning.rewards.scorer as reward_scorer
from grpo_lightning.rewards.scorer import RewardError, RewardScorer

PROMPTS = ["p0", "p1", "p2"]


@pytest.fixture
def pool_scorer():
    made = []

    def make(funcs, **kwargs):
        made.append(RewardScorer(funcs, workers=kwargs.pop("workers", 1), **kwargs))
        return made[-1]

    yield make
    for scorer in made:
        scorer.pool.close()


def test_a_hanging_reward_times_out_with_its_name_and_sample(pool_scorer):
    scorer = pool_scorer([sleepy], timeout=1.0)
    with pytest.raises(RewardError, match=r"'sleepy' timed out after 1s on completion 1 of 3") as info:
        scorer.score(PROMPTS, ["fine", "I hang here", "fine"])
    assert "prompt: 'p1'" in str(info.value) and "I hang here" in str(info.value)
    # The stuck worker was replaced: the next call scores normally.
    assert scorer.score(PROMPTS, ["a", "b", "c"]).flatten().tolist() == [1.0, 1.0, 1.0]


def test_with_errors_none_the_failed_completion_scores_none_and_is_warned(pool_scorer):
    scorer = pool_scorer([sleepy, crashy], timeout=1.0, errors="none", workers=2)
    with pytest.warns(UserWarning) as record:
        out = scorer.score(PROMPTS, ["ok", "hang", "crash"])
    messages = " ".join(str(w.message) for w in record)
    assert (
        "'sleepy' gave no score for 1 of 3" in messages and "timed out after 1s on completion 1" in messages
    )
    assert (
        "'crashy' gave no score for 1 of 3" in messages
        and "crashed its worker process (exit code 3)" in messages
    )
    assert out[0].tolist() == [1.0, 1.0]
    assert math.isnan(out[1, 0]) and out[1, 1] == 1.0
    assert out[2, 0] == 1.0 and math.isnan(out[2, 1])
    scorer.errors = "raise"
    with pytest.raises(
        RewardError, match=r"'crashy' crashed its worker process \(exit code 3\) on completion 0"
    ):
        scorer.score(PROMPTS[:1], ["crash"])


def test_workers_score_exactly_as_the_training_process_does(pool_scorer):
    columns = {"answer": ["1", "2", "3"], "max_completion_length": 8}
    completions = ["1", "x", "3"]
    serial = RewardScorer(["gsm8k_accuracy", picky]).score(PROMPTS, completions, columns)
    pooled = pool_scorer(["gsm8k_accuracy", picky], workers=2)
    assert torch.equal(serial, pooled.score(PROMPTS, completions, columns))
    with pytest.raises(
        RewardError, match=r"'picky' raised ValueError: cannot parse this one on completion 1 of 3"
    ):
        pooled.score(PROMPTS, ["1", "bad", "3"], columns)


def test_errors_none_in_the_training_process_scores_the_failing_completion_none():
    scorer = RewardScorer([picky], errors="none")
    with pytest.warns(UserWarning, match=r"'picky' gave no score for 1 of 3.*raised ValueError"):
        out = scorer.score(PROMPTS, ["1", "bad", "3"], {"answer": ["1", "2", "3"]})
    assert out[0, 0] == 1.0 and math.isnan(out[1, 0]) and out[2, 0] == 1.0


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="reward_timeout=5 needs reward_workers >= 1"):
        RewardScorer([sleepy], timeout=5)
    with pytest.raises(ValueError, match="'<lambda>' cannot be sent to a worker process"):
        RewardScorer([lambda prompts, completions, **k: [1.0] * len(completions)], workers=1)
    with pytest.raises(ValueError, match="reward_errors='skip' is not supported"):
        RewardScorer([sleepy], errors="skip")


def test_silent_reward_problems_are_warned_once(monkeypatch):
    def nothing(prompts, completions, **columns):
        return [None] * len(completions)

    def enormous(prompts, completions, **columns):
        return [1e30] * len(completions)

    scorer = RewardScorer([nothing, enormous])
    monkeypatch.setattr(reward_scorer, "SLOW_CALL_S", -1.0)
    with pytest.warns(UserWarning) as record:
        scorer.score(PROMPTS, ["a", "b", "c"])
    messages = [str(w.message) for w in record]
    assert any("'nothing' returned None for all 3 completions" in m for m in messages)
    assert not any("'enormous' returned" in m for m in messages)  # 1e30 is a finite float32: no problem
    assert any("reward_workers=4, reward_timeout" in m for m in messages)
    with pytest.warns() as again:  # once per function: the second step is quiet
        scorer.score(PROMPTS, ["a", "b", "c"])
        import warnings

        warnings.warn("marker", UserWarning, stacklevel=1)
    assert [str(w.message) for w in again] == ["marker"]


def test_the_module_settings_reach_the_scorer():
    from helpers import make_module

    module = make_module(reward_funcs=[sleepy], reward_workers=2, reward_timeout=3.0, reward_errors="none")
    assert module.scorer.pool.num_workers == 2 and module.scorer.pool.timeout == 3.0
    assert module.scorer.errors == "none" and not module.scorer.pool.pids  # started on first use
    # Validation's scorer (sampled pass@k) is guarded the same way.
    accuracy = module.accuracy_scorer
    assert accuracy.pool.num_workers == 2 and accuracy.pool.timeout == 3.0 and accuracy.errors == "none"
    with pytest.raises(ValueError, match=r"reward_timeout=3\.0 needs reward_workers >= 1"):
        make_module(reward_funcs=[sleepy], reward_timeout=3.0)


def test_a_fit_with_reward_workers_trains_and_ends_its_workers():
    from helpers import PromptsDataModule, make_module, make_trainer, tiny_tokenizer

    tok = tiny_tokenizer()
    module = make_module(tok, reward_funcs=["helpers:char_code_mean"], reward_workers=1, reward_timeout=60.0)
    trainer = make_trainer(max_steps=1)
    trainer.fit(module, datamodule=PromptsDataModule(tok))
    assert trainer.global_step == 1
    assert module.scorer.pool.pids == []  # closed at the end of fit
