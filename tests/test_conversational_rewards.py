"""Rewards on conversational prompts get what TRL's GRPOTrainer passes: ``prompts`` as message lists and
``completions`` as ``[{"role": "assistant", "content": text}]``; text prompts (a chat template
included) keep strings. The built-in rewards read both forms."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from helpers import make_module, make_trainer, one_thread  # noqa: F401 (autouse fixture)
from test_rewards_reward_model import tiny_classifier

from grpo_lightning.data.datamodule import PromptDataModule
from grpo_lightning.hf.tiny import build_char_tokenizer
from grpo_lightning.rewards import RewardModel, resolve_reward
from grpo_lightning.rewards.format import FormatReward
from grpo_lightning.rewards.length import LengthPenalty, OverlongPenalty
from grpo_lightning.rewards.scorer import RewardError, RewardScorer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def chat_tokenizer():
    tokenizer = build_char_tokenizer(model_max_length=4096)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# ---- TRL-style rewards, written exactly as in TRL's documentation ------------------------------


def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion[0]["content"])) for completion in completions]


def reward_question_len(prompts, completions, **kwargs):
    """Reads the last prompt message, as TRL rewards on conversational data do."""
    return [float(len(prompt[-1]["content"])) for prompt in prompts]


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]


QUESTIONS = ["What is 2 + 2?", "And 10 - 3?"]
CONVERSATIONS = [messages(q) for q in QUESTIONS]
TEXTS = [
    "<|system|>Be brief.\n<|user|>What is 2 + 2?\n<|assistant|>",
    "<|system|>Be brief.\n<|user|>And 10 - 3?\n<|assistant|>",
]


def test_trl_rewards_run_unchanged_on_conversational_prompts():
    scorer = RewardScorer([reward_len, reward_question_len])
    completions = ["#### 4", "10 - 3 = 7, so #### 7"]  # 6 and 21 characters
    per_func = scorer.score(TEXTS, completions, {"prompt_messages": CONVERSATIONS, "answer": ["4", "7"]})
    # reward_len: -|20 - 6| = -14, -|20 - 21| = -1; question lengths: 14 and 11 characters.
    assert per_func.tolist() == [[-14.0, 14.0], [-1.0, 11.0]]


class Recorder:
    """A reward that keeps what it was called with, and scores like ``reward_len``."""

    __name__ = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[list, list, dict]] = []

    def __call__(self, prompts, completions, **kwargs):
        self.calls.append((prompts, completions, kwargs))
        return (
            reward_len(completions)
            if completions and not isinstance(completions[0], str)
            else [0.0] * len(completions)
        )


def conversational_rows(n: int = 4) -> list[dict]:
    return [{"prompt": messages(f"What is {i} + {i}?"), "answer": str(2 * i)} for i in range(1, n + 1)]


def test_a_grpo_step_on_conversational_data_gives_rewards_messages():
    """One Trainer step over a conversational data set: TRL's rewards run unchanged and see TRL's shapes."""
    tokenizer = chat_tokenizer()
    recorder = Recorder()
    dm = PromptDataModule(
        Dataset.from_list(conversational_rows()), tokenizer=tokenizer, batch_size=2, val_fraction=0
    )
    module = make_module(
        tokenizer, reward_funcs=[recorder, reward_len, reward_question_len, "gsm8k_accuracy"]
    )
    trainer = make_trainer(max_steps=1)
    trainer.fit(module, datamodule=dm)

    (prompts, completions, columns), *_ = recorder.calls
    assert len(prompts) == len(completions) == 2 * 4  # 2 prompts x num_generations=4
    for prompt, completion, answer in zip(prompts, completions, columns["answer"], strict=True):
        i = int(answer) // 2  # each row's messages travel with its own gold answer
        assert prompt == messages(f"What is {i} + {i}?")
        assert len(completion) == 1 and completion[0]["role"] == "assistant"
        assert isinstance(completion[0]["content"], str)
    assert columns["completion_ids"] and len(columns["completion_ids"]) == 8  # the extras still come
    # The logged means are those of TRL's formulas on the texts the rewards saw: every question
    # "What is i + i?" is 14 characters long.
    metrics = trainer.callback_metrics
    lengths = [len(c[0]["content"]) for c in completions]
    assert float(metrics["train/rewards/reward_len/mean"]) == pytest.approx(
        sum(-abs(20 - n) for n in lengths) / 8
    )
    assert float(metrics["train/rewards/reward_question_len/mean"]) == 14.0


def test_rewards_get_strings_for_text_prompts_even_through_a_chat_template():
    """TRL: a data set of text prompts is not conversational, whatever template renders it."""
    tokenizer = chat_tokenizer()
    recorder = Recorder()
    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 5)]
    dm = PromptDataModule(
        Dataset.from_list(rows), tokenizer=tokenizer, batch_size=2, val_fraction=0, use_chat_template=True
    )
    make_trainer(max_steps=1).fit(make_module(tokenizer, reward_funcs=[recorder]), datamodule=dm)
    (prompts, completions, _), *_ = recorder.calls
    assert all(isinstance(p, str) and p.startswith("<|user|>What is ") for p in prompts)
    assert all(isinstance(c, str) for c in completions)


# ---- the built-in rewards read both forms ------------------------------------------------------


def as_messages(completions: list[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "assistant", "content": c}] for c in completions]


COMPLETIONS = ["2+2=4 #### 4", "#### 8", "no answer", "\\boxed{7}"]
ANSWERS = ["4", "7", "4", "7"]


@pytest.mark.parametrize(
    ("reward", "expected"),
    [
        ("gsm8k_accuracy", [1.0, 0.0, 0.0, 1.0]),
        ("gsm8k_accuracy_flexible", [1.0, 0.0, 0.0, 1.0]),
        (FormatReward(pattern="^####"), [0.0, 1.0, 0.0, 0.0]),
        # 12, 6, 9 and 9 characters:
        (LengthPenalty(max_length=12, unit="chars"), [-12 / 12, -6 / 12, -9 / 12, -9 / 12]),
        (OverlongPenalty(max_length=10, buffer=4, unit="chars"), [-1.0, 0.0, (6 - 9) / 4, (6 - 9) / 4]),
    ],
)
def test_builtin_rewards_score_message_completions_as_their_text(reward, expected):
    fn = resolve_reward(reward)
    prompts = [messages("q")] * 4
    as_text = fn(prompts=["q"] * 4, completions=list(COMPLETIONS), answer=list(ANSWERS))
    as_chat = fn(prompts=prompts, completions=as_messages(COMPLETIONS), answer=list(ANSWERS))
    assert as_chat == as_text == expected


def test_gsm8k_accuracy_scores_a_conversational_batch_through_the_scorer():
    scorer = RewardScorer(["gsm8k_accuracy", reward_len])
    per_func = scorer.score(
        TEXTS, ["#### 4", "#### 8"], {"prompt_messages": CONVERSATIONS, "answer": ["4", "7"]}
    )
    assert per_func.tolist() == [[1.0, -14.0], [0.0, -14.0]]


def test_reward_model_reads_a_conversation_through_its_chat_template():
    model, tokenizer = tiny_classifier()
    tokenizer.chat_template = CHAT_TEMPLATE
    reward = RewardModel(model, tokenizer)
    completions = ["#### 4", "#### 7"]
    scores = reward(CONVERSATIONS, as_messages(completions))
    texts = [f"{t}{c}\n" for t, c in zip(TEXTS, completions, strict=True)]
    assert texts[0] == "<|system|>Be brief.\n<|user|>What is 2 + 2?\n<|assistant|>#### 4\n"
    assert scores == pytest.approx(reward.score(texts).tolist())
    tokenizer.chat_template = None
    with pytest.raises(
        ValueError, match=r"has none\. Give RewardModel a tokenizer with a chat template, or format_fn"
    ):
        reward(CONVERSATIONS, as_messages(completions))


# ---- errors and the other ways of calling ------------------------------------------------------


def test_a_batch_mixing_conversations_and_text_is_refused():
    scorer = RewardScorer([reward_len])
    with pytest.raises(
        ValueError, match=r"'prompt_messages' holds 1 of 2 rows that are not message lists \(row 1"
    ):
        scorer.score(TEXTS, ["a", "b"], {"prompt_messages": [CONVERSATIONS[0], None]})


def broken_on_seven(prompts, completions, **kwargs):
    if any("7" in c[0]["content"] for c in completions):
        raise ValueError("no sevens")
    return [1.0] * len(completions)


def test_errors_quote_the_texts_and_one_by_one_scoring_passes_messages():
    columns = {"prompt_messages": CONVERSATIONS}
    with pytest.raises(
        RewardError, match=r"(?s)on completion 1 of 2.*prompt: '<\|system\|>.*completion: '#### 7'"
    ):
        RewardScorer([broken_on_seven]).score(TEXTS, ["#### 4", "#### 7"], columns)
    with pytest.warns(UserWarning, match="gave no score for 1 of 2"):
        values = RewardScorer([broken_on_seven], errors="none").score(TEXTS, ["#### 4", "#### 7"], columns)
    assert values[0, 0] == 1.0 and torch.isnan(values[1, 0])


def test_worker_processes_pass_messages_too():
    scorer = RewardScorer([reward_len, "gsm8k_accuracy"], workers=1)
    try:
        per_func = scorer.score(
            TEXTS, ["#### 4", "#### 8"], {"prompt_messages": CONVERSATIONS, "answer": ["4", "7"]}
        )
    finally:
        scorer.pool.close()
    assert per_func.tolist() == [[-14.0, 1.0], [-14.0, 0.0]]


def test_a_reward_editing_its_messages_cannot_change_what_the_next_one_sees():
    def vandal(prompts, completions, **kwargs):
        prompts[0][-1]["content"] = "changed"
        completions[0][0]["content"] = "changed"
        return [0.0] * len(completions)

    conversations = [messages("What is 2 + 2?")]
    per_func = RewardScorer([vandal, reward_question_len, reward_len]).score(
        TEXTS[:1], ["#### 4"], {"prompt_messages": conversations}
    )
    assert per_func.tolist() == [[0.0, 14.0, -14.0]]
    assert conversations == [messages("What is 2 + 2?")]
