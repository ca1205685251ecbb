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


# What models write, with the reward each mode gives (completion, gold, strict, flexible).
MODELS_WRITE = [
    # LaTeX thousands separators, in a box and in running text.
    ("\\boxed{10,\\!000}", "10000", 1.0, 1.0),
    ("\\boxed{1{,}234}", "1234", 1.0, 1.0),
    ("\\boxed{1\\,000}", "1000", 1.0, 1.0),
    ("\\boxed{1\u2009000}", "1000", 1.0, 1.0),  # thin space
    ("#### 1 000", "1000", 1.0, 0.0),  # a plain space groups digits in a marked answer only
    ("The total is $10,\\!000$.", "10000", 0.0, 1.0),
    ("The total is $10,\\!000$.", "10", 0.0, 0.0),
    ("#### 12,345,678", "12345678", 1.0, 1.0),
    # Trailing punctuation, units, money, percentages, degrees.
    ("\\boxed{104.}", "104", 1.0, 1.0),
    ("#### 42.", "42", 1.0, 1.0),
    ("\\boxed{18 \\text{ dollars}}", "18", 1.0, 1.0),
    ("\\boxed{\\$18.00}", "18", 1.0, 1.0),
    ("#### $1,200.", "1200", 1.0, 1.0),
    ("\\boxed{25\\%}", "25", 1.0, 1.0),
    ("\\boxed{30^{\\circ}}", "30", 1.0, 1.0),
    ("#### 7 hours", "7", 1.0, 1.0),
    # Markdown.
    ("#### Step 2: multiply 6 by 7\n6*7 = 42", "2", 0.0, 0.0),  # a heading is not an answer
    ("#### Step 2: multiply 6 by 7\n6*7 = 42", "42", 0.0, 1.0),
    ("#### Step 1: add\n5+3 = 8\n#### Step 2: double\n8*2 = 16\n#### 16", "16", 1.0, 1.0),
    ("#### 16\n\n#### Verification\n16/2 = 8", "16", 1.0, 0.0),  # the heading after the answer is skipped
    ("#### Final Answer\nThe answer is 72.", "72", 1.0, 1.0),  # a bare label: the next line
    ("#### Final Answer:\n\n72", "72", 1.0, 1.0),
    ("#### Final answer: 72", "72", 1.0, 1.0),
    ("#### **Final Answer:** $72$", "72", 1.0, 1.0),
    ("#### The answer is 72", "72", 1.0, 1.0),
    ("#### **72**", "72", 1.0, 1.0),
    ("####\n72", "72", 1.0, 1.0),  # the marker alone on its line
    ("##### 72", "72", 1.0, 1.0),  # five hashes
    ("#### Answer to part 1: 3\nthen 4", "3", 0.0, 0.0),  # a heading that only mentions an answer
    ("#### 2. Multiply 6 by 7\n6*7 = 42", "2", 0.0, 0.0),  # a numbered heading
    ("#### 1) Add\n2+3 = 5\n#### 5", "5", 1.0, 1.0),
    ("#### 72 (she pays 72 dollars)", "72", 1.0, 1.0),
    ("#### Final Answer\n\\boxed{72}", "72", 1.0, 1.0),
    # Signs where they stand: a gold -(1/3) is -1/3, not +1/3.
    ("#### 1/3", "-(1/3)", 0.0, 0.0),
    ("#### -1/3", "-(1/3)", 1.0, 1.0),
    ("#### -(1/3)", "-1/3", 1.0, 1.0),
    ("#### -\\left(\\frac{1}{3}\\right)", "-1/3", 1.0, 1.0),
    ("#### \\frac{-1}{3}", "-1/3", 1.0, 1.0),
    ("#### (-1)/3", "-1/3", 1.0, 1.0),
    ("so x = -(1/3)", "-1/3", 0.0, 1.0),
    ("\\boxed{-(5)}", "5", 0.0, 0.0),
]


@pytest.mark.parametrize(("completion", "gold", "strict", "flexible"), MODELS_WRITE)
def test_what_models_write(completion, gold, strict, flexible):
    assert gsm8k_accuracy([""], [completion], answer=[gold]) == [strict]
    assert gsm8k_accuracy_reward("flexible")([""], [completion], answer=[gold]) == [flexible]


@pytest.mark.parametrize("mode", ["strict", "flexible"])
def test_degenerate_completions_are_read_quickly_and_right(mode):
    reward = Gsm8kAccuracy(mode)
    assert reward([""], ["\\boxed{42} " + "\\boxed{" * 20_000], answer=["42"]) == [1.0]
    assert reward([""], ["#### 7" + " " * 100_000 + "$"], answer=["7"]) == [1.0]
    assert reward([""], ["#### " + "9" * 5000], answer=["9"]) == [0.0]  # an overlong number is no answer


def test_unusable_gold_warns_once_and_counts():
    reward = Gsm8kAccuracy()
    with pytest.warns(RuntimeWarning, match="'five' holds no number") as caught:
        assert reward(["", "", ""], ["#### 5"] * 3, answer=["five", "six", "5"]) == [None, None, 1.0]
        assert reward([""], ["#### 5"], answer=[""]) == [None]
    assert len([w for w in caught if "holds no number" in str(w.message)]) == 1
    assert reward.unusable_golds == 3
