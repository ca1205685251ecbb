"""math_accuracy: the last \\boxed{} checked with math-verify in checker processes: normalisation, guarded
false positives, unusable golds, and the time limit on any thread."""

import subprocess
import sys
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


CASES = [
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", 1.0),
    (r"\boxed{4}", "5", 0.0),
]


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


DET_GOLD = r"\begin{vmatrix} 1 & 2 \\ 3 & 4 \end{vmatrix} = -2"

# What models and datasets write, with the reward a grader should give (completion, gold, expected).
MODELS_WRITE = [
    # LaTeX digit groups: math-verify alone reads 1\,000 as the product 1*000 = 0.
    (r"\boxed{0}", r"1\,000", 0.0),
    (r"\boxed{1000}", r"1\,000", 1.0),
    (r"\boxed{1\,000}", "1000", 1.0),
    (r"\boxed{10,\!000}", "10000", 1.0),
    (r"\boxed{1{,}234}", "1234", 1.0),
    (r"\boxed{1 000}", "1000", 1.0),
    (r"\boxed{\frac{12}{5525}}", r"\frac{12}{5,\!525}", 1.0),  # this gold gave None
    # A trailing full stop or comma inside the box, units, degrees, money.
    (r"\boxed{104.}", "104", 1.0),
    (r"\boxed{5,}", "5", 1.0),
    (r"\boxed{30}", r"30^\circ.", 1.0),  # this gold gave None
    (r"\boxed{7}", r"7\text{ hours}.", 1.0),  # this gold gave None
    (r"\boxed{7\text{ hours}}", "7", 1.0),
    (r"\boxed{12\mbox{ widgets}}", "12", 1.0),
    (r"\boxed{5\,\mathrm{cm}^2}", "5", 1.0),
    (r"\boxed{5 cm}", "5", 1.0),  # a unit abbreviation after a number is still a unit
    (r"\boxed{90°}", "90", 1.0),
    (r"\boxed{30^{\circ}}", "30", 1.0),
    (r"\boxed{\$1{,}000}", "1000", 1.0),
    (r"\boxed{$\frac{1}{2}$}", "0.5", 1.0),
    (r"\boxed{\frac{1}{2}\text{ cup}}", "0.5", 1.0),
    (r"\boxed{50\%}", "50", 1.0),  # math-verify's reading of percentages, kept: 50% is 50 or 0.5
    (r"\boxed{0.5}", r"50\%", 1.0),
    # math-verify's false positives, guarded.
    (r"\boxed{11x+6y+5z+86=0}", "0", 0.0),  # an equation is not the value of its right-hand side
    (r"\boxed{x+y=5}", "5", 0.0),
    (r"\boxed{2x=10}", "10", 0.0),
    (r"\boxed{x = 5}", "5", 1.0),  # an assignment is
    (r"\boxed{f(x) = 2x+1}", "2x+1", 1.0),
    (r"\boxed{AB = 5}", "5", 1.0),
    (r"\boxed{6 \times 7 = 42}", "42", 1.0),  # an equation without variables states its value
    (r"\boxed{2+3=6}", "5", 0.0),
    (r"\boxed{\begin{vmatrix} 2 & 0 \\ 0 & 3 \end{vmatrix} = 6}", DET_GOLD, 0.0),  # always matched
    (r"\boxed{2+3=5}", DET_GOLD, 0.0),
    (r"\boxed{-2}", DET_GOLD, 1.0),
    (r"\boxed{2c}", "2", 0.0),  # a letter after a number is a variable, not a dropped unit
    (r"\boxed{2}", "2c", 0.0),
    (r"\boxed{2c}", "2c", 1.0),
    (r"\boxed{2ab}", "2", 0.0),
    (r"\boxed{\frac{a}{2}c}", r"\frac{a}{2}", 0.0),
    (r"\boxed{x + c}", "x + c", 1.0),
    # A tuple of names on the left of "=" assigns its right-hand side (TRL and math-verify: 1).
    (r"\boxed{(x, y) = (5, 8)}", "(5, 8)", 1.0),
    (r"\boxed{(x, y) = (5, 9)}", "(5, 8)", 0.0),  # a wrong tuple
    (r"\boxed{(x, y) = (8, 5)}", "(5, 8)", 0.0),  # order matters
    (r"\boxed{(a, b, c) = (1, -2, 3)}", "(1, -2, 3)", 1.0),
    (r"\boxed{\left(x, y\right) = \left(\frac{1}{2}, 3\right)}", "(0.5, 3)", 1.0),
    (r"\boxed{[x, y] = [5, 8]}", "[5, 8]", 1.0),
    (r"\boxed{(x_1, x_2) = (5, 8)}", "(5, 8)", 1.0),
    (r"\boxed{(x+1, y) = (5, 8)}", "(5, 8)", 0.0),  # not names: an equation
    (r"\boxed{(x, 2) = (5, 8)}", "(5, 8)", 0.0),
    (r"\boxed{(x+1, y) = (5, 8)}", "8", 0.0),  # an unreadable box is not its last number
    (r"\boxed{[x, y] = [5, 8]}", "8", 0.0),
    (r"\boxed{(x, y) \leq (5, 8)}", "(5, 8)", 0.0),
    # Percent words are units, not variables; a real variable still is one.
    (r"\boxed{28 pct}", r"28\%", 1.0),
    (r"\boxed{28pct}", r"28\%", 1.0),
    (r"\boxed{28 percent}", r"28\%", 1.0),
    (r"\boxed{28\%}", "28 pct", 1.0),
    (r"\boxed{28 pct}", r"29\%", 0.0),
    (r"\boxed{28 p}", r"28\%", 0.0),
    (r"\boxed{3 kms}", "3", 1.0),
    # Signs where they stand in a gold.
    (r"\boxed{-1/3}", "-(1/3)", 1.0),
    (r"\boxed{1/3}", "-(1/3)", 0.0),
    # Greek letters are symbols: \gamma was Euler's constant or the Gamma function (the gold became None).
    (r"\boxed{m_p c^2(\gamma^2-1)\sin^2\theta}", r"m_p c^2(\gamma^2-1)\sin^2\theta", 1.0),
    (r"\boxed{m_p c^2(\gamma^2+1)\sin^2\theta}", r"m_p c^2(\gamma^2-1)\sin^2\theta", 0.0),
    (r"\boxed{(\gamma-1)(\gamma+1)}", r"\gamma^2-1", 1.0),
    (r"\boxed{0.5772}", r"\gamma", 0.0),
    (r"\boxed{2\Pi}", r"2\Pi", 1.0),
    (r"\boxed{2\pi}", r"2\Pi", 0.0),
    (r"\boxed{2\pi}", r"2\pi", 1.0),  # \pi stays pi
    # Degenerate completions.
    ("\\boxed{42} " + "\\boxed{" * 4000, "42", 1.0),
    ("So the answer is \\boxed{\\frac{1}{2} " * 3000, "0.5", 0.0),
    ("\\boxed{" + "1+" * 600 + "1}", "601", 0.0),  # over 1,000 characters: not an answer
]


@pytest.mark.parametrize(("completion", "gold", "expected"), MODELS_WRITE)
def test_what_models_write(completion, gold, expected):
    assert math_accuracy(["prompt"], [completion], answer=[gold]) == [expected]


def test_parallel_checker_processes_give_the_serial_answers():
    # One batch through two processes: order kept, each gold's checks grouped on one process.
    cases = TABLE + MODELS_WRITE
    reward = MathAccuracy(num_workers=2)
    rewards = reward([""] * len(cases), [c for c, _, _ in cases], answer=[g for _, g, _ in cases])
    assert rewards == [expected for _, _, expected in cases]


GREEK = "alpha beta gamma delta epsilon zeta eta theta kappa lambda mu nu xi rho sigma tau phi chi psi omega"
GREEK = [*GREEK.split(), "Gamma", "Delta", "Theta", "Lambda", "Pi", "Sigma", "Phi", "Omega"]


def test_every_greek_letter_in_a_gold_is_a_symbol():
    # Right: the same expression in the letter. Wrong: the same expression in x. A letter read as a
    # constant or a function (\gamma, \Gamma, \Pi were) makes the gold None or the wrong answer right.
    golds = [rf"m_p c^2(\{g}^2-1)\sin^2\theta" for g in GREEK]
    right = [rf"\boxed{{m_p c^2(\{g}^2-1)\sin^2\theta}}" for g in GREEK]
    wrong = [r"\boxed{m_p c^2(x^2-1)\sin^2\theta}"] * len(GREEK)
    reward = MathAccuracy()
    rewards = reward([""] * 2 * len(GREEK), right + wrong, answer=golds + golds)
    assert rewards == [1.0] * len(GREEK) + [0.0] * len(GREEK)
    assert reward.unusable_golds == 0


@pytest.mark.parametrize("gold", [r"05\!:\!00", "5:00", r"\frac{1}{0}"])
def test_a_gold_without_a_finite_value_is_not_applicable(gold):
    # math-verify reads 05:00 as 5/0 (complex infinity): every completion, the identical one too,
    # used to score 0.0.
    reward = MathAccuracy()
    with pytest.warns(RuntimeWarning, match="without a finite value"):
        assert reward([""], [rf"\boxed{{{gold}}}"], answer=[gold]) == [None]


def test_unusable_golds_warn_once_per_reward_and_are_counted():
    reward = MathAccuracy()
    with pytest.warns(RuntimeWarning) as caught:
        rewards = reward([""] * 4, [r"\boxed{5}"] * 4, answer=[r"05\!:\!00", r"\frac{", None, "5"])
    assert rewards == [None, None, None, 1.0]
    assert len([w for w in caught if "gold answer" in str(w.message)]) == 1
    assert reward.unusable_golds == 3


HANGS = r"\boxed{10^{10^{10}}}"  # sympy works on this for minutes (compared with an integer)


def test_a_check_past_the_time_limit_scores_none_off_the_main_thread(capfd):
    # Off the main thread math-verify has no time limit of its own; the checker process has one.
    # A fresh pool (three processes) so that their output is captured here.
    reward = MathAccuracy(timeout_seconds=1, num_workers=3)
    with pytest.warns(RuntimeWarning) as caught, ThreadPoolExecutor(1) as pool:
        completions = [HANGS, r"\boxed{5}", r"\boxed{4}"]
        rewards = pool.submit(reward, [""] * 3, completions, answer=["5"] * 3).result()
    assert rewards == [None, 1.0, 0.0]
    timeouts = [str(w.message) for w in caught if "time limit" in str(w.message)]
    assert len(timeouts) == 1 and "10^{10^{10}}" in timeouts[0]  # one warning, naming it
    assert reward([""], [r"\boxed{\sqrt{8}}"], answer=[r"2\sqrt{2}"]) == [1.0]  # its replacement works
    assert "Timeout is disabled" not in capfd.readouterr().err  # math-verify's notice is silenced


def test_a_gold_past_the_time_limit_scores_none(monkeypatch):
    import grpo_lightning.rewards.math as math_reward
    from grpo_lightning.rewards._checker_pool import Failed

    class SlowPool:
        def run(self, requests, timeout, keys=None):
            return [Failed("it took longer than the 1 s time limit")] * len(requests)

    monkeypatch.setattr(math_reward, "shared_pool", lambda n: SlowPool())
    reward = MathAccuracy(timeout_seconds=1)
    with pytest.warns(RuntimeWarning, match="could not be read: it took longer than the 1 s"):
        assert reward(["", ""], [r"\boxed{1}", r"\boxed{2}"], answer=["1", "1"]) == [None, None]


def test_a_gold_that_timed_out_once_is_checked_again_next_time(monkeypatch):
    # A time limit hit on a busy machine is not a verdict on the gold: the next rollout retries it.
    import grpo_lightning.rewards.math as math_reward
    from grpo_lightning.rewards import _mathcheck
    from grpo_lightning.rewards._checker_pool import Failed

    class OnceSlowPool:
        gold_checks = 0

        def run(self, requests, timeout, keys=None):
            if requests and requests[0][0] == "gold":
                OnceSlowPool.gold_checks += 1
                if OnceSlowPool.gold_checks == 1:
                    return [Failed("it took longer than the 1 s time limit")] * len(requests)
                return [_mathcheck.GOLD_OK] * len(requests)
            return [1.0 if r[2] == r[1] else 0.0 for r in requests]

    monkeypatch.setattr(math_reward, "shared_pool", lambda n: OnceSlowPool())
    reward = MathAccuracy(timeout_seconds=1)
    with pytest.warns(RuntimeWarning):
        assert reward([""], [r"\boxed{1}"], answer=["1"]) == [None]
    assert reward([""], [r"\boxed{1}"], answer=["1"]) == [1.0]
    assert OnceSlowPool.gold_checks == 2


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "5"])
def test_bad_timeout_is_refused(bad):
    with pytest.raises(ValueError, match="timeout_seconds must be a positive number"):
        MathAccuracy(timeout_seconds=bad)


@pytest.mark.parametrize("bad", [0, True, 1.5, "2"])
def test_bad_num_workers_is_refused(bad):
    with pytest.raises(ValueError, match="num_workers must be a whole number >= 1"):
        MathAccuracy(num_workers=bad)


def test_importing_the_reward_does_not_load_math_verify():
    code = "import sys, grpo_lightning.rewards.math; print('math_verify' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
