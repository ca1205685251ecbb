"""Reward plumbing: weights, None/NaN, columns, and errors that name the function and the sample."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from helpers import (
    make_module,
    one_thread,  # noqa: F401 (autouse fixture)
    prompt_batch,
    tiny_tokenizer,
)

from grpo_lightning.rewards.scorer import RewardError, RewardScorer, combine_rewards, reward_name
from grpo_lightning.rollout.scoring import repeat_columns

PROMPTS = ["p0", "p0", "p1", "p1"]
COMPLETIONS = ["a", "bb", "ccc", "dddd"]
NAN = float("nan")


def length(prompts, completions, **kw):
    return [float(len(c)) for c in completions]


def only_long(prompts, completions, **kw):
    return [1.0 if len(c) > 2 else None for c in completions]


def test_weighted_sum_skips_nan_terms_and_is_nan_only_when_all_are():
    per_func = torch.tensor([[1.0, 2.0], [NAN, 2.0], [1.0, NAN], [NAN, NAN]])
    total = combine_rewards(per_func, torch.tensor([0.5, 2.0]))
    # row 0: 0.5*1 + 2*2 = 4.5; row 1: only the second term (4.0); row 2: only the first (0.5)
    torch.testing.assert_close(total[:3], torch.tensor([4.5, 4.0, 0.5]))
    assert math.isnan(total[3])


def test_scorer_none_becomes_nan_and_weights_apply():
    scorer = RewardScorer([length, only_long], reward_weights=[1.0, 10.0])
    per_func = scorer.score(PROMPTS, COMPLETIONS)
    assert per_func.shape == (4, 2)
    assert torch.isnan(per_func[:2, 1]).all() and per_func[2:, 1].tolist() == [1.0, 1.0]
    torch.testing.assert_close(scorer.combine(per_func), torch.tensor([1.0, 2.0, 13.0, 14.0]))


def test_names_are_readable_and_unique():
    scorer = RewardScorer([length, length, functools.partial(only_long)])
    assert scorer.names == ["length", "length_2", "only_long"]
    assert reward_name(lambda p, c: c) == "<lambda>"


def test_reward_that_raises_names_the_function_and_the_offending_sample():
    def picky(prompts, completions, **kw):
        return [1.0 / (len(c) - 3) for c in completions]  # "ccc" divides by zero

    with pytest.raises(RewardError, match=r"'picky' raised ZeroDivisionError") as info:
        RewardScorer([picky]).score(PROMPTS, COMPLETIONS)
    assert "completion 2 of 4" in str(info.value) and "'ccc'" in str(info.value) and "'p1'" in str(info.value)


def test_wrong_count_non_numeric_and_inf_are_clear_errors():
    with pytest.raises(RewardError, match=r"'<lambda>' returned 3 values for 4 completions"):
        RewardScorer([lambda prompts, completions, **kw: [1.0] * 3]).score(PROMPTS, COMPLETIONS)
    with pytest.raises(RewardError, match=r"returned 'yes' \(str\) for completion 0"):
        RewardScorer([lambda prompts, completions, **kw: ["yes"] * 4]).score(PROMPTS, COMPLETIONS)
    with pytest.raises(RewardError, match="rewards must be finite"):
        RewardScorer([lambda prompts, completions, **kw: [math.inf] * 4]).score(PROMPTS, COMPLETIONS)
    with pytest.raises(RewardError, match="must return a list"):
        RewardScorer([lambda prompts, completions, **kw: 1.0]).score(PROMPTS, COMPLETIONS)


def short(prompts, completions, **kw):
    return [1.0] * 3


def test_wrong_count_error_uses_the_function_name():
    with pytest.raises(RewardError, match=r"'short' returned 3 values for 4 completions"):
        RewardScorer([short]).score(PROMPTS, COMPLETIONS)


def test_nan_is_not_applicable_with_a_warning_and_tensors_and_bools_are_accepted():
    def mixed(prompts, completions, **kw):
        return [NAN, True, torch.tensor(0.5), 2]

    with pytest.warns(UserWarning, match="treated as None"):
        values = RewardScorer([mixed]).score(PROMPTS, COMPLETIONS)[:, 0]
    assert math.isnan(values[0]) and values[1:].tolist() == [1.0, 0.5, 2.0]


def test_bad_weights_and_missing_functions_fail_at_construction():
    with pytest.raises(ValueError, match="reward_weights has 1 entries but there are 2"):
        RewardScorer([length, only_long], reward_weights=[1.0])
    with pytest.raises(ValueError, match="No reward function"):
        RewardScorer([])
    with pytest.raises(ValueError, match="Unknown reward 'no_such_reward'"):
        RewardScorer(["no_such_reward"])


def test_repeat_columns_follows_repeat_interleave_order():
    batch = {"prompt": ["a", "b"], "answer": ["1", "2"], "ids": torch.tensor([7, 8]), "level": 3}
    cols = repeat_columns(batch, 3, skip=("prompt",))
    assert cols["answer"] == ["1", "1", "1", "2", "2", "2"]
    assert cols["ids"].tolist() == [7, 7, 7, 8, 8, 8]
    assert cols["level"] == 3 and "prompt" not in cols


def test_module_passes_dataset_columns_and_completion_extras_to_rewards():
    seen = {}

    def spy(prompts, completions, **columns):
        seen.update(columns, prompts=prompts, completions=completions)
        return [0.0] * len(completions)

    tok = tiny_tokenizer()
    module = make_module(tok, reward_funcs=[spy], num_generations=3, max_completion_length=5)
    module.configure_model()
    scored = module.sampler.sample(
        prompt_batch(tok, ["1+1=", "2+3="]),
        0,
        num_generations=3,
        sampling=module.sampling,
        scorer=module.scorer,
    )
    assert seen["prompts"] == ["1+1="] * 3 + ["2+3="] * 3
    assert seen["answer"] == ["2"] * 3 + ["5"] * 3
    assert seen["completion_lengths"] == scored.rollout.lengths.tolist()
    assert [len(ids) for ids in seen["completion_ids"]] == seen["completion_lengths"]
    assert seen["truncated"] == scored.rollout.truncated.tolist()
    assert seen["max_completion_length"] == 5
    # completions are the decoded completion tokens up to the EOS, which is dropped
    assert seen["completions"] == tok.batch_decode(seen["completion_ids"], skip_special_tokens=True)
    assert "input_ids" not in seen and "attention_mask" not in seen
