"""The sampler on its own: a tiny model, a batch of prompts -> a scored rollout, no module or Trainer."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    one_thread,  # noqa: F401 (autouse fixture)
    prompt_batch,
    tiny_sampler,
)

from grpo_lightning.rewards.scorer import RewardScorer
from grpo_lightning.rollout.engine import SamplingConfig
from grpo_lightning.rollout.sampler import Sampler, num_prompts


def length(prompts, completions, **columns):
    return [float(len(c)) for c in completions]


def answer_seen(prompts, completions, answer, **columns):
    return [1.0 if a in c else 0.0 for c, a in zip(completions, answer, strict=True)]


def make_sampler(num_generations=3, max_completion_length=6, mask_truncated=False) -> Sampler:
    scorer = RewardScorer([length, answer_seen], reward_weights=[1.0, 10.0])
    return tiny_sampler(scorer, num_generations, max_completion_length, mask_truncated)


def test_a_batch_becomes_a_scored_rollout_of_p_times_g_rows():
    sampler = make_sampler(num_generations=3, max_completion_length=6)
    batch = prompt_batch(sampler.tokenizer, ["1+1=", "12+30="])
    scored = sampler.rollout(batch, seed=0)
    n = 2 * 3
    assert len(scored.rollout) == n
    assert scored.rollout.prompt_ids.shape == (n, 6)  # the longer prompt, "12+30=", is 6 tokens
    assert scored.rollout.completion_ids.shape[0] == n and scored.rollout.completion_ids.shape[1] <= 6
    assert scored.prompts == ["1+1="] * 3 + ["12+30="] * 3
    assert scored.per_func.shape == (n, 2) and scored.total.shape == (n,)
    # The rewards are the functions' values on the decoded completions, weighted 1 and 10.
    expected_length = [float(len(c)) for c in scored.completions]
    expected_seen = [
        1.0 if a in c else 0.0 for c, a in zip(scored.completions, ["2"] * 3 + ["42"] * 3, strict=True)
    ]
    assert scored.per_func[:, 0].tolist() == expected_length
    assert scored.per_func[:, 1].tolist() == expected_seen
    torch.testing.assert_close(scored.total, torch.tensor(expected_length) + 10 * torch.tensor(expected_seen))
    assert scored.columns["answer"] == ["2"] * 3 + ["42"] * 3
    assert scored.columns["completion_lengths"] == scored.rollout.lengths.tolist()
    # The same seed gives the same rollout; another seed another one.
    assert sampler.rollout(batch, seed=0).completions == scored.completions
    assert sampler.rollout(batch, seed=1).completions != scored.completions


def test_sample_takes_its_own_settings_and_scorer():
    sampler = make_sampler(num_generations=4, max_completion_length=6)
    batch = prompt_batch(sampler.tokenizer, ["1+1="])
    greedy = SamplingConfig(max_completion_length=3, do_sample=False)
    scored = sampler.sample(batch, 0, num_generations=2, sampling=greedy, scorer=RewardScorer([length]))
    assert len(scored.rollout) == 2 and scored.rollout.completion_ids.shape[1] <= 3
    assert scored.completions[0] == scored.completions[1]  # greedy: both samples agree
    assert scored.per_func.shape == (2, 1)
    assert scored.columns["max_completion_length"] == 3


def test_text_only_batches_are_tokenized_and_bad_batches_named():
    sampler = make_sampler(num_generations=2)
    scored = sampler.rollout({"prompt": ["1+1=", "2+3="], "answer": ["2", "5"]}, seed=0)
    assert scored.prompts == ["1+1="] * 2 + ["2+3="] * 2
    with_ids = sampler.rollout(prompt_batch(sampler.tokenizer, ["1+1=", "2+3="]), seed=0)
    assert scored.completions == with_ids.completions
    with pytest.raises(KeyError, match=r"needs 'prompt' \(texts\) or 'input_ids'; got keys \['answer'\]"):
        sampler.rollout({"answer": ["2"]}, seed=0)
    assert num_prompts({"prompt": ["a", "b", "c"]}) == 3


def test_mask_truncated_applies_to_training_rollouts():
    sampler = make_sampler(num_generations=4, max_completion_length=2, mask_truncated=True)
    scored = sampler.rollout(prompt_batch(sampler.tokenizer, ["1+1="]), seed=0)
    truncated = scored.rollout.truncated
    assert truncated.any()  # a random tiny model rarely stops within 2 tokens
    assert (scored.rollout.completion_mask[truncated] == 0).all()
