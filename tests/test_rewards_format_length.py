"""format_reward presets and custom patterns; DAPO's overlong penalty and the linear length penalty."""

import pickle
import re

import pytest

from grpo_lightning.hf.tiny import build_char_tokenizer
from grpo_lightning.rewards import (
    FormatReward,
    LengthPenalty,
    OverlongPenalty,
    format_reward,
    length_penalty,
    overlong_penalty,
    resolve_reward,
    think_format_reward,
)
from grpo_lightning.rewards.length import soft_overlong_penalty

LONG = "step " * 20000

ANSWER_TABLE = [
    ("12+7=19, 19-3=16 #### 16", 1.0),  # the synthetic format: reasoning then #### on one line
    ("Add them: 3 + 4 = 7.\n#### 7\n", 1.0),
    ("So the answer is $\\boxed{16}$.", 1.0),
    ("Thus **\\boxed{\\frac{\\sqrt{2}}{2}}**", 1.0),  # nested braces inside the box
    ("\\[ x = 2 \\]\nFinal: \\[\\boxed{2}\\]", 1.0),
    ("#### 16", 0.0),  # no reasoning before the answer
    ("\\boxed{16} and then more text", 0.0),  # the answer must end the completion
    ("reasoning\n#### 16\nmore words", 0.0),
    ("reasoning ####   ", 0.0),  # an empty answer
    ("The answer is 16.", 0.0),  # no marker
    ("", 0.0),
    (LONG + "#### 5", 1.0),  # long inputs stay fast (one pass)
    (LONG, 0.0),
    # The marked place must hold a readable answer: what a policy learned to game scores 0.
    ("Let me think.\n#### <any text>", 0.0),
    ("Let me think.\n#### The answer is clear", 0.0),
    ("reasoning\n##### prose", 0.0),
    ("reasoning\n#### Step 2: multiply", 0.0),  # a markdown heading
    ("So the answer is \\boxed{}.", 0.0),  # the prompt template's literal \boxed{}, echoed
    ("So the answer is \\boxed{ }.", 0.0),
    ("So the answer is \\boxed{\\text{}}.", 0.0),
    ("So the answer is \\boxed{...}.", 0.0),
    ("So the answer is \\boxed{answer}.", 0.0),
    ("So the answer is \\boxed{\\text{your answer}}.", 0.0),
    ("So the answer is \\boxed{\\square}.", 0.0),
    ("So the answer is \\boxed{I think it is five apples}.", 0.0),  # a sentence
    ("#### 10\n#### 10\n#### 10", 0.0),  # answer lines repeated are no reasoning
    ("$\\boxed{5}$", 0.0),  # a dollar sign is no reasoning either
    # Readable answers of every kind pass.
    ("reasoning\n##### 5", 1.0),  # gsm8k_accuracy reads five hashes too
    ("reasoning\n#### Final answer: 72", 1.0),
    ("reasoning\n#### -(1/3)", 1.0),
    ("reasoning\n#### $1,200.", 1.0),
    ("Add 5 and 5.\n#### 10\n#### 10", 1.0),
    ("Hence $\\boxed{x+1}$.", 1.0),
    ("Hence $\\boxed{\\pi}$.", 1.0),
    ("Hence $\\boxed{\\text{Monday}}$.", 1.0),
    ("Hence $\\boxed{\\text{(C)}}$.", 1.0),
    ("Hence $\\boxed{(-\\infty, 2]}$.", 1.0),
    ("Hence \\boxed{\\text{Devon and Evelyn}}", 1.0),
]


@pytest.mark.parametrize(("completion", "expected"), ANSWER_TABLE)
def test_answer_format(completion, expected):
    assert format_reward([""], [completion]) == [expected]


THINK_TABLE = [
    ("<think>3 + 4 = 7</think> The answer is 7.", 1.0),
    ("3 + 4 = 7</think>\n7", 1.0),  # the chat template put <think> in the prompt
    ("<think>3 + 4 = 7</think>", 0.0),  # no answer after the reasoning
    ("<think></think> 7", 0.0),  # no reasoning
    ("<think>a</think> 7 <think>b</think> 8", 0.0),  # one think block only
    ("<think>a<think>b</think> 7", 0.0),
    ("The answer is 7.", 0.0),
    ("<think>" + LONG + "</think> 7", 1.0),
    ("<think>" + LONG, 0.0),
    ("<think>3 + 4 = 7</think> The answer is \\boxed{}.", 0.0),  # a box must hold an answer
    ("<think>3 + 4 = 7</think> The answer is \\boxed{7}.", 1.0),
    ("<think>3 + 4 = 7</think> seven", 0.0),  # no number, no marked answer
    ("<think>3 + 4 = 7</think>\n#### 7", 1.0),
    ("<think>3 + 4 = 7</think>\n#### prose", 0.0),
]


@pytest.mark.parametrize(("completion", "expected"), THINK_TABLE)
def test_think_format(completion, expected):
    assert think_format_reward([""], [completion]) == [expected]


def test_custom_pattern_and_errors():
    reward = FormatReward(pattern=r"^Answer: -?\d+$")
    assert reward(["", ""], ["Answer: -12", "Answer: twelve"]) == [1.0, 0.0]
    assert FormatReward(pattern="^answer", flags=re.IGNORECASE)([""], ["ANSWER"]) == [1.0]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        FormatReward(pattern="(unclosed")
    with pytest.raises(ValueError, match=r"preset='xml'.*'answer', 'think'"):
        FormatReward(preset="xml")
    # Settings that could not take effect are refused, not ignored.
    with pytest.raises(ValueError, match=r"preset='think' or pattern=.*not both"):
        FormatReward(preset="think", pattern="x")
    with pytest.raises(ValueError, match=r"flags=re\.IGNORECASE apply to a pattern"):
        FormatReward(flags=re.IGNORECASE)
    assert resolve_reward("format_reward") is format_reward
    assert (format_reward.__name__, think_format_reward.__name__) == ("format_reward", "think_format_reward")
    assert repr(think_format_reward) == "FormatReward(preset='think')"


def test_format_rewards_pickle():
    # Reward objects travel to worker processes.
    for reward in (format_reward, think_format_reward, FormatReward(pattern="x")):
        copy = pickle.loads(pickle.dumps(reward))
        assert copy(["", ""], ["Add: 5\n#### 5", "<think>a</think> 5"]) == reward(
            ["", ""], ["Add: 5\n#### 5", "<think>a</think> 5"]
        )


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, 0.0),
        (80, 0.0),  # max_length - buffer = 100 - 20 = 80: still free
        (85, -0.25),  # (80 - 85) / 20
        (90, -0.5),
        (99, -0.95),
        (100, -1.0),  # at the limit
        (130, -1.0),  # beyond it (when the caller does not truncate)
    ],
)
def test_soft_overlong_penalty_values(length, expected):
    assert soft_overlong_penalty(length, max_length=100, buffer=20) == pytest.approx(expected)


def test_overlong_penalty_length_sources():
    reward = OverlongPenalty(max_length=100, buffer=20)
    completions = ["a", "b", "c"]
    by_lengths = reward(["", "", ""], completions, completion_lengths=[10, 90, 100])
    by_ids = reward(["", "", ""], completions, completion_ids=[[1] * 10, [1] * 90, [1] * 100])
    assert by_lengths == by_ids == pytest.approx([0.0, -0.5, -1.0])
    # Without lengths, a tokenizer given at construction counts tokens (one per character here).
    tokenized = OverlongPenalty(max_length=100, buffer=20, tokenizer=build_char_tokenizer())
    assert tokenized(["", ""], ["x" * 80, "y" * 95]) == pytest.approx([0.0, -0.75])
    assert OverlongPenalty(max_length=10, buffer=4, unit="chars")([""], ["z" * 8]) == pytest.approx([-0.5])
    with pytest.raises(ValueError, match=r"completion_lengths.*completion_ids.*tokenizer"):
        reward([""], ["text"])


def test_registered_length_rewards_take_the_limit_from_the_columns():
    # The registered defaults know no limit: the trainer's max_completion_length, when passed, is it.
    assert resolve_reward("overlong_penalty") is overlong_penalty
    assert overlong_penalty([""], ["a"], completion_lengths=[90], max_completion_length=100) == pytest.approx(
        [-0.5]
    )
    assert length_penalty(["", ""], ["a", "b"], completion_lengths=[25, 400], max_completion_length=100) == [
        pytest.approx(-0.25),
        -1.0,
    ]
    with pytest.raises(ValueError, match="max_length"):
        overlong_penalty([""], ["a"], completion_lengths=[3])


def test_length_penalty_and_bad_settings():
    assert LengthPenalty(max_length=200)(["", ""], ["", "x"], completion_lengths=[0, 50]) == [0.0, -0.25]
    with pytest.raises(ValueError, match=r"buffer .* cannot exceed"):
        OverlongPenalty(max_length=10, buffer=20)
    with pytest.raises(ValueError, match="unit='words'"):
        LengthPenalty(max_length=10, unit="words")
    with pytest.raises(ValueError, match="2 completions but 1 lengths"):
        LengthPenalty(max_length=10)(["", ""], ["a", "b"], completion_lengths=[1])


def test_a_reward_function_type_is_defined_once():
    from grpo_lightning import rewards
    from grpo_lightning.rewards import scorer as reward_scorer

    assert reward_scorer.RewardFunc is rewards.RewardFunc
