"""math_accuracy: the last \\boxed{} checked with math-verify, also off the main thread."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from grpo_lightning.rewards import MathAccuracy, math_accuracy, math_accuracy_reward, resolve_reward

LONG = "We expand, simplify and check each case carefully. " * 1500  # about 78k characters

# (completion, gold, expected): what a grader should say, checked by hand.
TABLE = [
    (r"\boxed{72}", "72", 1.0),
    (r"so $\boxed{72.0}$.", "72", 1.0),
    (r"\boxed{-3}", "-3", 1.0),  # negatives
    (r"\boxed{3}", "-3", 0.0),
    (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),  # decimals vs fractions
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"\boxed{\dfrac{14}{3}}", r"\frac{14}{3}", 1.0),
    (r"\boxed{14/3}", r"\frac{14}{3}", 1.0),
    (r"\boxed{4.67}", r"\frac{14}{3}", 0.0),  # a rounded value is not 14/3
    (r"\boxed{1,000}", "1000", 1.0),  # thousands comma
    (r"\boxed{\$5}", "5", 1.0),  # dollars
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", 1.0),  # sqrt(8) = 2 sqrt(2)
    (r"\boxed{\sqrt{2}}", r"2\sqrt{2}", 0.0),
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", 1.0),  # text answers
    (r"\boxed{\text{Bob}}", r"\text{Evelyn}", 0.0),
    (r"\boxed{90^\circ}", "90", 1.0),  # degrees
    (r"\boxed{(-\infty, 2]}", r"(-\infty, 2]", 1.0),  # intervals: endpoints matter
    (r"\boxed{(-\infty, 2)}", r"(-\infty, 2]", 0.0),
    (r"\boxed{[1,3)}", "[1, 3)", 1.0),
    (r"\boxed{3, 5}", "5, 3", 1.0),  # a set of solutions, in any order
    (r"First \boxed{3}, no wait: \boxed{5}", "5", 1.0),  # several boxes: the last wins
    (r"First \boxed{3}, no wait: \boxed{5}", "3", 0.0),
    ("The answer is 5.", "5", 0.0),  # no box: no answer
    (r"\boxed{}", "5", 0.0),  # an empty box
    (r"\boxed{\frac{1}{2}", "0.5", 0.0),  # malformed LaTeX: the box never closes
    (r"\boxed{\frac{1}{}}", "0.5", 0.0),  # malformed LaTeX inside a closed box
    (r"\boxed{72}", "#### 72", 1.0),  # a GSM8K answer text as gold
    (r"\boxed{0.5}", r"Thus the probability is $\boxed{\frac{1}{2}}$.", 1.0),  # a MATH solution as gold
    (LONG + r"\boxed{7}", "7", 1.0),  # very long completions
    (LONG, "7", 0.0),
]


@pytest.mark.parametrize(("completion", "gold", "expected"), TABLE)
def test_math_accuracy_table(completion, gold, expected):
    assert math_accuracy(["prompt"], [completion], answer=[gold]) == [expected]


@pytest.mark.parametrize("gold", [r"\frac{", "}{", "", "   ", None])
def test_unparseable_gold_is_not_applicable(gold):
    # A broken gold answer is a data problem: None keeps it out of the group statistics.
    assert math_accuracy([""], [r"\boxed{2}"], answer=[gold]) == [None]


def test_registered_default_and_factory():
    assert resolve_reward("math_accuracy") is math_accuracy
    reward = math_accuracy_reward(answer_column="final")
    assert reward(["", ""], [r"\boxed{2}", r"\boxed{3}"], final=["2", "2"], answer=["3", "3"]) == [1.0, 0.0]
    with pytest.raises(KeyError, match="'final'"):
        reward([""], [r"\boxed{2}"], answer=["2"])


CASES = [(r"\boxed{\frac{1}{2}}", "0.5", 1.0), (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", 1.0), (r"\boxed{4}", "5", 0.0)]


def test_works_off_the_main_thread():
    # math-verify's own timeout relies on signal.alarm, which fails off the main thread: prove that
    # the failure is real here, then that the reward still answers correctly from worker threads.
    from math_verify import parse

    def parse_with_signal_timeout():
        return parse("$1$", parsing_timeout=5)

    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(ValueError, match="threaded"):
            pool.submit(parse_with_signal_timeout).result()
        reward = MathAccuracy(timeout_seconds=5)
        futures = [pool.submit(reward, [""], [c], answer=[g]) for c, g, _ in CASES * 2]
        results = [f.result() for f in futures]
    assert results == [[expected] for _, _, expected in CASES * 2]
    assert threading.current_thread() is threading.main_thread()
    assert reward([""], [CASES[0][0]], answer=[CASES[0][1]]) == [1.0]  # and on the main thread


class _RewardDataset(torch.utils.data.Dataset):
    """Scores one case per item, so the reward runs inside a DataLoader worker process."""

    def __len__(self) -> int:
        return len(CASES)

    def __getitem__(self, i: int) -> float | None:
        completion, gold, _ = CASES[i]
        return math_accuracy([""], [completion], answer=[gold])[0]


def test_works_in_a_dataloader_worker():
    loader = torch.utils.data.DataLoader(_RewardDataset(), batch_size=None, num_workers=1)
    assert list(loader) == [expected for _, _, expected in CASES]
