"""``predict`` on prompts without answers: every prompt of the file gets its completions written;
rewards that need the answer are not called (null, and the records and one warning say why)."""

from __future__ import annotations

import json
import re
from functools import partial

import pytest
import torch
from faulty_rewards import completion_length, picky
from helpers import (
    answer_reward,
    char_code_mean,
    one_thread,  # noqa: F401 (autouse fixture)
    prompt_batch,
    save_tiny_policy,
    tiny_sampler,
    tiny_tokenizer,
)

from grpo_lightning.cli.app import main
from grpo_lightning.evaluation.predict import predict_records
from grpo_lightning.rewards import format_reward, gsm8k_accuracy, math_accuracy
from grpo_lightning.rewards.scorer import RewardScorer
from grpo_lightning.rollout.engine import SamplingConfig


def test_what_each_reward_needs_is_read_from_its_answer_column_or_its_signature():
    from grpo_lightning.evaluation.skipped_rewards import needed_columns

    assert needed_columns(gsm8k_accuracy) == ["answer"] and needed_columns(math_accuracy) == ["answer"]
    assert needed_columns(picky) == needed_columns(answer_reward) == ["answer"]
    assert needed_columns(format_reward) == needed_columns(char_code_mean) == []
    assert needed_columns(partial(answer_reward, answer=["2"])) == []  # given: nothing needed from the data


def test_predict_on_a_file_of_prompts_without_answers_writes_every_completion(tmp_path, capsys):
    prompts = [f"{a}+{b}=" for a in range(4) for b in range(5)]  # 20: validation would hold one out
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"question": p}) + "\n" for p in prompts))
    args = [
        "predict",
        f"--model.model={save_tiny_policy(tmp_path / 'policy')}",
        "--model.reward_funcs=[gsm8k_accuracy, format_reward]",
        "--model.num_generations=2",
        "--model.max_completion_length=4",
        "--model.val_num_samples=2",
        f"--data.dataset={data}",
        "--data.require_answer=false",
        "--data.prompt_template={question}",
        "--data.val_batch_size=10",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
    ]
    with pytest.warns(UserWarning, match=r"rewards not called: 'gsm8k_accuracy' needs the column 'answer'") as record:
        main(args)
    assert len([w for w in record if "rewards not called" in str(w.message)]) == 1  # said once, not per batch
    path = re.search(r"^  predictions\s+(\S+)", capsys.readouterr().out, re.M).group(1)
    with open(path) as f:
        records = [json.loads(line) for line in f]
    greedy = [r for r in records if r["kind"] == "greedy"]
    assert sorted(r["prompt"] for r in greedy) == sorted(prompts)  # every prompt: none held out, none dropped
    assert len(records) == 20 * 3
    for r in records:
        assert isinstance(r["completion"], str) and r["correct"] is None
        assert r["rewards"]["gsm8k_accuracy"] is None
        assert r["reward"] == r["rewards"]["format_reward"] == format_reward([r["prompt"]], [r["completion"]])[0]
        assert "needs the column 'answer'" in r["skipped_rewards"]["gsm8k_accuracy"]


def test_predict_records_skip_what_needs_answers_in_reward_workers_too():
    scorer = RewardScorer([picky, completion_length], workers=1, timeout=30.0)
    sampler = tiny_sampler(scorer)
    batch = prompt_batch(tiny_tokenizer())
    del batch["answer"]  # unlabelled prompts
    try:
        records = predict_records(
            sampler,
            batch,
            lambda stream: 0,
            SamplingConfig(max_completion_length=6, do_sample=False),
            2,
            lambda scored: torch.zeros(len(scored.completions), dtype=torch.bool),  # never called
            RewardScorer([picky]),
        )
    finally:
        scorer.pool.close()
    assert [r["kind"] for r in records] == ["greedy"] * 2 + ["sampled"] * 4
    for r in records:
        assert r["rewards"] == {"picky": None, "completion_length": float(len(r["completion"]))}
        assert r["reward"] == len(r["completion"]) and r["correct"] is None
        assert set(r["skipped_rewards"]) == {"picky"} and "so 'correct' is null" in r["skipped_rewards"]["picky"]
