"""pass@k, maj@k and mean@N against hand-computed values and a brute force over all k-subsets."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from fractions import Fraction

import pytest
import torch

from grpo_lightning.evaluation.metrics import (
    majority_at_k,
    majority_at_k_batch,
    mean_at_n,
    pass_at_k,
    report_ks,
)


def brute_pass(correct: list[bool], k: int) -> float:
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


def brute_majority(answers: list, correct: list[bool], k: int) -> Fraction:
    """The mean over every k-subset of: the share of correct answers among those with the most votes."""
    right = {a for a, ok in zip(answers, correct, strict=True) if ok and a is not None}
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(answers)), k))
    for subset in subsets:
        votes = Counter(answers[i] for i in subset if answers[i] is not None)
        if not votes:
            continue
        top = max(votes.values())
        tied = [a for a, v in votes.items() if v == top]
        total += Fraction(sum(a in right for a in tied), len(tied))
    return total / len(subsets)


def test_pass_at_k_by_hand():
    # n = 5, c = 2: 1 - C(3, k) / C(5, k) = 2/5, 1 - 3/10, 1 - 1/10, 1, 1
    got = pass_at_k(torch.tensor([2, 0, 5]), 5)
    assert got.shape == (3, 5)
    assert got[0].tolist() == pytest.approx([0.4, 0.7, 0.9, 1.0, 1.0], abs=1e-12)
    assert got[1].tolist() == [0.0] * 5
    assert got[2].tolist() == [1.0] * 5


def test_pass_at_k_is_stable_for_many_samples():
    # C(1000, 500) overflows float64; the product form does not. n=1000, c=1: pass@k = k / n exactly.
    got = pass_at_k(torch.tensor([1]), 1000)[0]
    assert got[499].item() == pytest.approx(0.5, rel=1e-12)
    assert got[0].item() == pytest.approx(0.001, rel=1e-12) and got[-1].item() == 1.0


def test_pass_at_k_matches_the_brute_force():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 8)
        correct = [rng.random() < 0.4 for _ in range(n)]
        got = pass_at_k(torch.tensor([sum(correct)]), n)[0].tolist()
        assert got == pytest.approx([brute_pass(correct, k) for k in range(1, n + 1)], abs=1e-12)


@pytest.mark.parametrize(("num_correct", "n"), [([-1], 3), ([4], 3), ([1.5], 3), ([1], 0)])
def test_pass_at_k_refuses_impossible_counts(num_correct, n):
    with pytest.raises(ValueError, match=r"num_correct|num_samples"):
        pass_at_k(torch.tensor(num_correct), n)


def test_mean_at_n():
    correct = torch.tensor([[True, False, True, True], [False, False, False, False]])
    assert mean_at_n(correct).tolist() == [0.75, 0.0]
    with pytest.raises(ValueError, match="problems, samples"):
        mean_at_n(torch.tensor([True]))


def test_majority_by_hand_two_to_one():
    # A A B, A correct. k=2: {A,A} -> 1, {A,B} twice -> a tie, 1/2 each: (1 + 1/2 + 1/2) / 3.
    assert majority_at_k(["A", "A", "B"], [True, True, False]) == pytest.approx([2 / 3, 2 / 3, 1.0])


def test_majority_by_hand_with_abstentions_and_a_three_way_tie():
    # A B - C, B correct, "-" gave no answer (does not vote).
    # k=1: 1/4. k=2: {A,B} 1/2, {B,-} 1, {B,C} 1/2, the others 0: 2/6.
    # k=3: {A,B,-} 1/2, {A,B,C} 1/3, {B,-,C} 1/2, {A,-,C} 0: (4/3)/4. k=4: a three-way tie, 1/3.
    got = majority_at_k(["A", "B", None, "C"], [False, True, False, False])
    assert got == pytest.approx([1 / 4, 1 / 3, 1 / 3, 1 / 3])


def test_majority_when_nobody_answers_or_nobody_is_right():
    assert majority_at_k([None, None, None], [False] * 3) == [0.0, 0.0, 0.0]
    assert majority_at_k(["1", "2", "2"], [False] * 3) == [0.0, 0.0, 0.0]
    assert majority_at_k(["7"] * 4, [True] * 4) == [1.0] * 4


def test_majority_can_fall_with_k_while_pass_rises():
    # The right answer is a minority: more votes make the wrong majority win more often.
    got = majority_at_k(["r", "w", "w", "w", "w"], [True, False, False, False, False])
    assert got[0] == pytest.approx(0.2) and got[-1] == 0.0
    assert all(a >= b for a, b in itertools.pairwise(got))


def test_majority_matches_the_brute_force_over_all_subsets():
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 9)
        answers = [rng.choice([0, 1, 2, 3, None]) for _ in range(n)]
        right = set(rng.sample([0, 1, 2, 3], rng.randint(0, 2)))  # sometimes two spellings are right
        correct = [a in right for a in answers]
        got = majority_at_k(answers, correct)
        expected = [float(brute_majority(answers, correct, k)) for k in range(1, n + 1)]
        assert got == pytest.approx(expected, abs=1e-12), (answers, correct)


def test_an_answer_is_right_when_any_of_its_samples_was_scored_right():
    # The same answer scored right once and wrong once (a checker timeout, say) counts as right.
    got = majority_at_k(["5", "5", "6"], [True, False, False])
    assert got == pytest.approx(
        [float(brute_majority(["5", "5", "6"], [True, True, False], k)) for k in (1, 2, 3)]
    )


def test_majority_is_exact_for_many_samples():
    # 64 samples, 20 distinct answers: still exact (checked against a probability that sums to 1).
    rng = random.Random(2)
    answers = [rng.randint(0, 19) for _ in range(64)]
    each = [majority_at_k(answers, [a == r for a in answers]) for r in sorted(set(answers))]
    for k in range(64):
        assert math.isclose(sum(row[k] for row in each), 1.0, rel_tol=1e-12)  # someone always wins


def test_majority_batch_and_bad_input():
    correct = torch.tensor([[True, True, False], [False, False, False]])
    got = majority_at_k_batch([["A", "A", "B"], ["x", None, "y"]], correct)
    assert got.shape == (2, 3) and got[0].tolist() == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert got[1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="same, non-zero length"):
        majority_at_k(["A"], [True, False])
    with pytest.raises(ValueError, match="problems, samples"):
        majority_at_k_batch([["A"]], torch.tensor([True]))


def test_report_ks():
    assert report_ks(1) == [1] and report_ks(4) == [1, 2, 3, 4] and report_ks(16) == list(range(1, 17))
    assert report_ks(20) == [1, 2, 4, 8, 16, 20] and report_ks(32) == [1, 2, 4, 8, 16, 32]
    with pytest.raises(ValueError, match="at least 1"):
        report_ks(0)
