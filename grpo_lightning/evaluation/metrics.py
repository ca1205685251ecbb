"""Estimators over N sampled completions per problem: mean@N, unbiased pass@k and maj@k.

Pure functions of which samples were correct (and, for maj@k, which answer each one gave); no
model involved. With ``n`` samples of which ``c`` are correct:

- ``mean@n`` = ``c / n``, the mean accuracy of the samples.
- ``pass@k`` = ``1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021, "Evaluating Large Language Models
  Trained on Code"): the probability that at least one of ``k`` samples drawn without replacement
  from the ``n`` is correct. Unbiased for the pass@k of the model, unlike "any of the first k".
  ``pass@1`` equals ``mean@n``.
- ``maj@k``: the probability that the majority answer among ``k`` samples drawn without
  replacement from the ``n`` is correct, computed exactly (the mean over all ``C(n, k)`` subsets,
  not over one prefix of ``k`` samples). Samples without an answer (``None``) do not vote; a subset
  where nobody votes counts as wrong. A tie between answers is broken uniformly at random, so a
  subset where the correct answer ties with ``s`` others counts ``1 / (s + 1)``. An answer is
  correct when any sample that gave it was scored correct (the same thing whenever correctness is
  a function of the extracted answer, as with the shipped accuracy rewards).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

#: Up to this many samples per problem every k = 1..N is reported; above it, see :func:`report_ks`.
ALL_KS_UP_TO = 16


def report_ks(num_samples: int) -> list[int]:
    """The k at which pass@k and maj@k are reported for ``num_samples`` samples per problem:
    every k up to ``ALL_KS_UP_TO`` samples, otherwise the powers of two below ``num_samples`` and
    ``num_samples`` itself (``report_ks(20) == [1, 2, 4, 8, 16, 20]``)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1; got {num_samples}.")
    if num_samples <= ALL_KS_UP_TO:
        return list(range(1, num_samples + 1))
    return [2**i for i in range(num_samples.bit_length()) if 2**i < num_samples] + [num_samples]


def mean_at_n(correct: Tensor) -> Tensor:
    """``correct: [P, N]`` bool (sample j of problem p is correct) -> ``[P]`` float64 share correct."""
    if correct.dim() != 2 or correct.shape[1] == 0:
        raise ValueError(
            f"correct must be [problems, samples] with at least one sample; got {tuple(correct.shape)}."
        )
    return correct.to(torch.float64).mean(dim=1)


def pass_at_k(num_correct: Tensor, num_samples: int) -> Tensor:
    """Unbiased pass@k for k = 1..N of each problem.

    Args:
        num_correct: ``[P]`` integer count of correct samples per problem, each in ``0..num_samples``.
        num_samples: N, the samples drawn per problem.

    Returns:
        ``[P, N]`` float64; column ``k - 1`` is pass@k.

    ``C(n - c, k) / C(n, k)`` is the product of ``(n - c - i) / (n - i)`` over ``i < k``: every factor
    is in [0, 1], so the running product neither overflows nor loses the small values that a
    difference of huge binomials would. A factor reaches 0 at ``i = n - c`` (then every k-subset
    holds a correct sample) and the product stays 0.
    """
    n = int(num_samples)
    if n < 1:
        raise ValueError(f"num_samples must be at least 1; got {num_samples}.")
    c = torch.as_tensor(num_correct).to(torch.float64).reshape(-1)
    if bool(((c < 0) | (c > n) | (c != c.round())).any()):
        raise ValueError(f"num_correct must be whole numbers in 0..{n}; got {c.tolist()}.")
    i = torch.arange(n, dtype=torch.float64)
    factors = ((n - c[:, None] - i) / (n - i)).clamp(min=0.0)  # [P, N]
    return 1.0 - factors.cumprod(dim=1)


def majority_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool]) -> list[float]:
    """maj@k for k = 1..N of one problem (see the module docstring for the definition).

    Args:
        answers: ``[N]`` the answer extracted from each sample (any hashable; ``None`` = no answer).
        correct: ``[N]`` whether each sample was scored correct.

    Returns:
        ``[N]`` floats; item ``k - 1`` is maj@k.

    Exact, in integers: for each correct answer j and each vote count t it could win with, the
    number of k-subsets in which j gets t votes, every other answer at most t, and s others exactly
    t (each such subset counts ``1 / (s + 1)``), is a coefficient of a product of truncated binomial
    polynomials. Answers with fewer than t samples can never reach t, so they merge with the
    abstentions into one binomial (Vandermonde's identity). Answers with the same (size, correct)
    give the same sums and are counted once, times their number.
    """
    n = len(answers)
    if n == 0 or len(correct) != n:
        raise ValueError(
            f"answers and correct must have the same, non-zero length; got {n} and {len(correct)}."
        )
    sizes: Counter[Hashable] = Counter()
    right: dict[Hashable, bool] = {}
    for answer, ok in zip(answers, correct, strict=True):
        if answer is not None:
            sizes[answer] += 1
            right[answer] = right.get(answer, False) or bool(ok)
    abstain = n - sum(sizes.values())
    classes = list(sizes.values())
    scale = math.lcm(*range(1, len(classes) + 1)) if classes else 1  # makes every 1/(s+1) whole
    numerators = [0] * (n + 1)
    groups = Counter((sizes[a], right[a]) for a in sizes)
    for (size, is_right), count in groups.items():
        if not is_right:
            continue
        others = list(classes)
        others.remove(size)
        for t in range(1, size + 1):
            ways = _subsets_where_it_wins(others, abstain, t, n, scale)
            weight = count * math.comb(size, t)
            for k, w in enumerate(ways, start=t):
                numerators[k] += weight * w
    return [numerators[k] / (scale * math.comb(n, k)) for k in range(1, n + 1)]


def _subsets_where_it_wins(others: list[int], abstain: int, t: int, n: int, scale: int) -> list[int]:
    """For k = t..n: the number of ways to draw ``k - t`` samples from the other answers (sizes
    ``others``) and the ``abstain`` non-voters such that no other answer gets more than ``t`` votes,
    each way weighted by ``scale / (s + 1)``, s = the answers that tie at ``t``."""
    budget = n - t
    below = abstain + sum(c for c in others if c < t)  # can never reach t: any draw is allowed
    # ties[d][s]: ways to draw d samples from the answers that could reach t, s of them landing on t.
    ties = [[1]]
    for c in (c for c in others if c >= t):
        grown = [[0] * (len(ties[0]) + 1) for _ in range(min(len(ties) + t, budget + 1))]
        for d, row in enumerate(ties):
            for s, ways in enumerate(row):
                if not ways:
                    continue
                for x in range(min(t, budget - d) + 1):
                    grown[d + x][s + (x == t)] += ways * math.comb(c, x)
        ties = grown
    weighted = [sum(ways * (scale // (s + 1)) for s, ways in enumerate(row)) for row in ties]
    return [
        sum(weighted[d] * math.comb(below, m - d) for d in range(min(m, len(weighted) - 1) + 1))
        for m in range(budget + 1)
    ]


def majority_at_k_batch(answers: Sequence[Sequence[Hashable | None]], correct: Tensor) -> Tensor:
    """:func:`majority_at_k` of each problem: ``answers`` ``[P][N]``, ``correct`` ``[P, N]`` bool ->
    ``[P, N]`` float64, column ``k - 1`` is maj@k."""
    if correct.dim() != 2 or len(answers) != correct.shape[0]:
        raise ValueError(
            f"answers ({len(answers)} problems) and correct {tuple(correct.shape)} must both be [problems, samples]."
        )
    rows = [majority_at_k(list(a), c) for a, c in zip(answers, correct.tolist(), strict=True)]
    return torch.tensor(rows, dtype=torch.float64).reshape(correct.shape)
