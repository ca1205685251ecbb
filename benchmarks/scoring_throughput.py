"""Scoring throughput: MATH-style completions scored by ``math_accuracy`` in the training process
against worker processes (``reward_workers``), in one run.

    python benchmarks/scoring_throughput.py                    # 512 completions, 1 and 2 workers
    python benchmarks/scoring_throughput.py --n 2048 --workers 1 2 4 --repeats 3

The completions look like a math model's: a few sentences of working, then ``\\boxed{...}`` with an
integer, a fraction, a root, a decimal, an interval or a coordinate pair, right or wrong against
the gold answer. Each configuration scores the same completions ``--repeats`` times after a warm-up
call (worker start-up is excluded and printed apart); the median is reported as completions per
second and as a ratio to the serial figure. Compare the time per batch with a training step's to see
whether scoring dominates.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from grpo_lightning.rewards.scorer import RewardScorer

ANSWERS = [
    ("\\frac{14}{3}", ["\\frac{14}{3}", "\\frac{28}{6}", "4.67", "\\frac{3}{14}"]),
    ("2\\sqrt{5}", ["2\\sqrt{5}", "\\sqrt{20}", "4.47", "2\\sqrt{3}"]),
    ("72", ["72", "72.0", "27", "-72"]),
    ("(3, -1)", ["(3, -1)", "(3,-1)", "(-1, 3)", "(3, 1)"]),
    ("[2, 5)", ["[2, 5)", "[2,5)", "(2, 5]", "[2, 5]"]),
    ("0.125", ["0.125", "\\frac{1}{8}", "0.25", "12.5\\%"]),
    ("x^2 + 2x + 1", ["x^2 + 2x + 1", "(x+1)^2", "x^2 + 1", "x^2+2x+1"]),
]


def completions(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """``n`` prompts, completions and gold answers, MATH-style."""
    rng = random.Random(seed)
    prompts, texts, golds = [], [], []
    for i in range(n):
        gold, candidates = ANSWERS[i % len(ANSWERS)]
        working = " ".join(
            rng.choice(
                [
                    "First we simplify the expression.",
                    "Multiplying both sides by $2$, we get $2x = 14 - x$.",
                    "By the quadratic formula, $x = \\frac{-b \\pm \\sqrt{b^2 - 4ac}}{2a}$.",
                    "Substituting back, the value checks out.",
                    "So the sum of the roots is $-\\frac{b}{a}$.",
                ]
            )
            for _ in range(rng.randint(2, 6))
        )
        prompts.append(f"Problem {i}: compute the value.")
        texts.append(f"{working} Therefore the answer is $\\boxed{{{rng.choice(candidates)}}}$.")
        golds.append(gold)
    return prompts, texts, golds


def timed(scorer: RewardScorer, prompts, texts, golds, repeats: int) -> tuple[float, float]:
    """(first call incl. start-up, median of ``repeats`` further calls) in seconds."""
    columns = {"answer": golds}
    t0 = time.perf_counter()
    first = scorer.score(prompts, texts, columns)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        again = scorer.score(prompts, texts, columns)
        times.append(time.perf_counter() - t0)
        assert again.equal(first) or (again.isnan() == first.isnan()).all()
    return warm, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=512, help="completions per batch (e.g. 64 prompts x 8)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=10.0, help="reward_timeout for the worker runs")
    args = parser.parse_args()
    prompts, texts, golds = completions(args.n)
    print(f"{args.n} MATH-style completions, math_accuracy; {os.cpu_count()} CPUs; load {os.getloadavg()}")
    serial = RewardScorer(["math_accuracy"])
    warm, base = timed(serial, prompts, texts, golds, args.repeats)
    accuracy = float(serial.score(prompts, texts, {"answer": golds}).nanmean())
    print(
        f"  serial      : {args.n / base:8.0f} completions/s  ({base * 1000:7.1f} ms per batch)  mean reward {accuracy:.3f}"
    )
    for w in args.workers:
        scorer = RewardScorer(["math_accuracy"], workers=w, timeout=args.timeout)
        warm, median = timed(scorer, prompts, texts, golds, args.repeats)
        scorer.pool.close()
        print(
            f"  {w} worker(s) : {args.n / median:8.0f} completions/s  ({median * 1000:7.1f} ms per batch)  "
            f"x{base / median:.2f} of serial; first call with start-up {warm:.1f} s"
        )


if __name__ == "__main__":
    main()
