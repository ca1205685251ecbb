"""Every reward call gets its own copy of the prompts, completions and columns: a reward that edits
its inputs changes nothing for the next reward, the scored rollout or the logged completions."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import (
    one_thread,  # noqa: F401 (autouse fixture)
    prompt_batch,
    tiny_sampler,
)

from grpo_lightning.rewards.scorer import RewardError, RewardScorer, fresh_copy

PROMPTS = ["p0", "p0", "p1", "p1"]
COMPLETIONS = ["a", "bb", "ccc", "dddd"]


def columns() -> dict:
    return {
        "answer": ["1", "1", "2", "2"],
        "meta": [{"level": 1}, {"level": 1}, {"level": 2}, {"level": 2}],
        "ids": torch.tensor([7, 7, 8, 8]),
        "completion_ids": [[1], [2, 2], [3, 3, 3], [4, 4, 4, 4]],
        "config": {"tolerance": 0.5},
        "max_completion_length": 4,
    }


def vandal(prompts, completions, answer, meta, ids, completion_ids, config, **rest):
    """Edits every input it gets, in every way a list, a dict or a tensor can be edited."""
    prompts.pop()
    completions.append("extra")
    completions[0] = "changed"
    answer[0] = "tampered"
    answer.pop()
    meta[0]["level"] = 99
    ids.add_(100)
    completion_ids[1].append(999)
    config["tolerance"] = 0.0
    return [0.0] * 4


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def test_a_reward_that_edits_its_inputs_does_not_change_what_the_next_one_sees() -> None:
    seen = {}

    def spy(prompts, completions, **cols):
        seen.update(prompts=prompts, completions=completions, columns=cols)
        return [1.0] * len(completions)

    given = columns()
    prompts, completions = list(PROMPTS), list(COMPLETIONS)
    out = RewardScorer([vandal, spy]).score(prompts, completions, given)
    assert out[:, 1].tolist() == [1.0] * 4
    assert seen["prompts"] == PROMPTS and seen["completions"] == COMPLETIONS
    assert _same(seen["columns"], columns())
    # The caller's own objects (what the scored rollout keeps and logs) are untouched too.
    assert prompts == PROMPTS and completions == COMPLETIONS and _same(given, columns())


def test_one_completion_at_a_time_after_a_failure_copies_too() -> None:
    # reward_errors="none": a batch call that raises is retried completion by completion, each with a row
    # of the columns; the dicts inside that row are the caller's unless copied.
    def fails_on_batches(prompts, completions, meta, **cols):
        meta[0]["level"] = 99
        if len(completions) > 1:
            raise ValueError("one at a time, please")
        return [1.0]

    seen = []

    def spy(prompts, completions, meta, **cols):
        seen.extend(m["level"] for m in meta)
        return [1.0] * len(completions)

    given = columns()
    out = RewardScorer([fails_on_batches, spy], errors="none").score(PROMPTS, COMPLETIONS, given)
    assert out.tolist() == [[1.0, 1.0]] * 4
    assert seen == [1, 1, 2, 2] and _same(given, columns())


def test_the_error_search_for_the_failing_completion_copies_too() -> None:
    def breaks(prompts, completions, meta, **cols):
        meta[0]["level"] = 99
        raise ValueError("broken")

    given = columns()
    with pytest.raises(RewardError, match="'breaks' raised ValueError: broken"):
        RewardScorer([breaks]).score(PROMPTS, COMPLETIONS, given)
    assert _same(given, columns())


def test_the_scored_rollout_keeps_what_was_sampled() -> None:
    # The case: a first reward that edits the answers made a second, answer-checking reward
    # score 0.0 on every step.
    def edits_answers(prompts, completions, answer, completion_ids, truncated, **cols):
        answer[:] = ["?"] * len(answer)
        for ids in completion_ids:
            ids.clear()
        truncated.reverse()
        return [0.0] * len(completions)

    def answer_seen(prompts, completions, answer, **cols):
        return [1.0 if a in ("2", "5") else 0.0 for a in answer]

    sampler = tiny_sampler(RewardScorer([edits_answers, answer_seen]), num_generations=3)
    tok = sampler.tokenizer
    scored = sampler.rollout(prompt_batch(tok, ["1+1=", "2+3="]), seed=0)
    assert scored.per_func[:, 1].tolist() == [1.0] * 6
    assert scored.columns["answer"] == ["2"] * 3 + ["5"] * 3
    assert [len(ids) for ids in scored.columns["completion_ids"]] == scored.rollout.lengths.tolist()
    assert scored.columns["truncated"] == scored.rollout.truncated.tolist()


def test_fresh_copy_shares_nothing_mutable() -> None:
    value = {"a": [1, "x", None], "b": ([{"c": [2]}], 3.0), "t": torch.tensor([1.0]), "s": {4}}
    copied = fresh_copy(value)
    assert copied["a"] == value["a"] and copied["a"] is not value["a"]
    assert copied["b"][0][0] == value["b"][0][0] and copied["b"][0][0] is not value["b"][0][0]
    assert copied["t"] is not value["t"] and torch.equal(copied["t"], value["t"])
    assert copied["s"] == value["s"] and copied["s"] is not value["s"]
    before = copy.deepcopy(value)
    copied["b"][0][0]["c"].append(5)
    copied["t"].add_(1)
    copied["s"].add(6)
    assert value["b"][0][0]["c"] == before["b"][0][0]["c"] and torch.equal(value["t"], before["t"])
    assert value["s"] == before["s"]
