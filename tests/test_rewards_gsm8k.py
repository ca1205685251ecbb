"""gsm8k_accuracy: the final number, strict (after #### or in the last box) or flexible (last number)."""

import pytest

from grpo_lightning.rewards import Gsm8kAccuracy, gsm8k_accuracy, gsm8k_accuracy_reward, resolve_reward

GSM8K_GOLD_TEXT = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
LONG = "Let me think about this step by step. " * 2000  # about 76k characters of reasoning

# (completion, gold, strict reward, flexible reward)
TABLE = [
    ("2+3=5 #### 5", "5", 1.0, 1.0),
    ("#### 18.0", "18", 1.0, 1.0),  # 18.0 == 18
    ("#### 18.5", "18", 0.0, 0.0),
    ("so -3 - 4 = -7\n#### -7", "-7", 1.0, 1.0),  # negatives
    ("#### 7", "-7", 0.0, 0.0),
    ("#### 1,234", "1234", 1.0, 1.0),  # thousands commas, either side
    ("#### 1234", "1,234", 1.0, 1.0),
    ("#### $1,234.50", "1234.5", 1.0, 1.0),  # dollars and decimals
    ("#### -$5", "-5", 1.0, 1.0),
    ("#### 18 dollars.", "18", 1.0, 1.0),  # units and a trailing period
    ("#### 90^\\circ", "90", 1.0, 1.0),  # degrees
    ("#### 3/4", "0.75", 1.0, 1.0),  # fractions compare exactly as rationals
    ("#### \\frac{3}{4}", "0.75", 1.0, 1.0),
    ("#### \\dfrac{3}{4}", "3/4", 1.0, 1.0),
    ("#### 0.333", "1/3", 0.0, 0.0),  # 0.333 is not 1/3
    ("#### \\frac{3}{4", "0.75", 0.0, 0.0),  # malformed LaTeX: the 3 is read, and 3 != 3/4
    ("The answer is \\boxed{42}.", "42", 1.0, 1.0),  # a box is an explicit final answer too
    ("#### 5\nOn reflection, \\boxed{6}", "6", 1.0, 1.0),  # whichever marker comes last
    ("\\boxed{6} but finally\n#### 5", "5", 1.0, 1.0),
    ("#### 4\n#### 5", "5", 1.0, 1.0),  # the last of several markers
    ("#### 4\n#### 5", "4", 0.0, 0.0),
    ("so the answer is 5", "5", 0.0, 1.0),  # no marker: only flexible reads it
    ("The answer is 16. Check: 16-3=13", "16", 0.0, 0.0),  # flexible takes the last number
    ("I don't know.", "5", 0.0, 0.0),  # no answer at all
    ("", "5", 0.0, 0.0),
    ("#### 72", GSM8K_GOLD_TEXT, 1.0, 1.0),  # a full GSM8K answer text as gold
    ("#### 5", "five", None, None),  # a gold without a number: not applicable
    (LONG + "#### 5", "5", 1.0, 1.0),  # very long completions
    (LONG + "12", "5", 0.0, 0.0),
]


@pytest.mark.parametrize(("completion", "gold", "strict", "flexible"), TABLE)
def test_gsm8k_accuracy_table(completion, gold, strict, flexible):
    assert gsm8k_accuracy([""], [completion], answer=[gold]) == [strict]
    assert gsm8k_accuracy_reward("flexible")([""], [completion], answer=[gold]) == [flexible]


def test_registered_defaults_and_batch_call():
    assert resolve_reward("gsm8k_accuracy") is gsm8k_accuracy
    assert resolve_reward("gsm8k_accuracy_flexible").mode == "flexible"
    # One call scores a whole rollout; unknown columns are ignored.
    rewards = gsm8k_accuracy(["p"] * 3, ["#### 1", "#### 2", "2"], answer=["1", "1", "2"], question=["q"] * 3)
    assert rewards == [1.0, 0.0, 0.0]


def test_answer_column_is_configurable_and_missing_column_is_named():
    reward = Gsm8kAccuracy(answer_column="target")
    assert reward([""], ["#### 3"], target=["3"]) == [1.0]
    with pytest.raises(KeyError, match=r"'target'.*\['answer'\]"):
        reward([""], ["#### 3"], answer=["3"])


def test_bad_settings_and_counts():
    with pytest.raises(ValueError, match=r"mode='loose'.*'strict', 'flexible'"):
        Gsm8kAccuracy(mode="loose")
    with pytest.raises(ValueError, match="2 completions but 1"):
        gsm8k_accuracy(["", ""], ["#### 1", "#### 2"], answer=["1"])
