"""Reward cost: throughput of ``math_accuracy`` (default), or every shipped reward on adversarial completions.

``--adversarial``: seconds per call of every shipped reward (``format_reward``, ``think_format_reward``,
``gsm8k_accuracy`` strict and flexible, ``math_accuracy`` with its checker processes,
``overlong_penalty`` counting tokens with a tokenizer, ``length_penalty``) on each shape of
``adversarial_completions.py`` (whitespace runs around markers, unclosed and nested braces, repeated
markers, long numbers, think tags, hard box contents) at 16,000, 32,000 and 200,000 characters, with
the ratio of the 200k time to the 16k time (12.5 where the cost is linear, 156 where quadratic).

    python benchmarks/bench_rewards.py --adversarial                         # 16k, 32k, 200k
    python benchmarks/bench_rewards.py --adversarial --chars 16000 200000 --rewards format_reward

Results: benchmarks/results/rewards-adversarial-cpu-2core.txt.

Throughput (the default): serial in-process math-verify against the checker processes.

A rollout of ``--problems`` x ``--group`` MATH-style completions (default 128 x 8 = 1,024) is made in
code: worked-solution-like text (a few hundred characters of LaTeX reasoning) ending in a boxed
answer of one of 16 kinds (integers, fractions, roots, polynomials, intervals, points, solution sets,
matrices, degrees, dollars, thousands, percentages, multiples of pi, text, equations, decimals). Half
of each group writes the gold answer in another equivalent form, half a wrong value. Every
measurement gets a rollout of its own (new seed), so no cache is warm from the one before.

Measured per completion, in one run:

- ``extract``: finding the box and normalising both answers (what the reward does before any check);
- ``gsm8k``: ``gsm8k_accuracy`` (strict) on the same completions, in this process (no time limit
  needed: its reading and comparison are linear-time pure Python);
- ``serial``: the same checks as the reward, with math-verify called in this process, one after the
  other (no time limit off the main thread; what ``math_accuracy`` did before checker processes);
- the round trip to a checker process alone (a request answered from the process's cache);
- ``workers=K``: ``MathAccuracy(num_workers=K)`` end to end (extraction, the gold pass, the checks in
  K checker processes with the 5 s limit), the processes started beforehand (start-up is reported
  on its own).

    python benchmarks/bench_rewards.py                      # 1,024 completions, workers 1 and 2
    python benchmarks/bench_rewards.py --workers 1 2 4 8 --repeats 3

Results: docs/rewards.md, "Throughput" (2-core machine shared with other jobs: serial 6.1-6.3 ms per
completion, one checker process 0.93-0.98x of that, two 0.95-1.08x; the round trip 0.03-0.05 ms);
raw output in benchmarks/results/rewards-cpu-2core.txt.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adversarial_completions import SHAPES, shipped_rewards, time_calls

from grpo_lightning.rewards import _mathcheck
from grpo_lightning.rewards._checker_pool import shared_pool
from grpo_lightning.rewards._normalize import normalize_answer
from grpo_lightning.rewards.answers import extract_gold_answer, extract_last_boxed
from grpo_lightning.rewards.gsm8k import gsm8k_accuracy
from grpo_lightning.rewards.math import MathAccuracy

REASONING = [
    r"Let $x$ be the unknown. Substituting into the equation, we get $3x + {a} = {b}$, so $x = \frac{{{b} - {a}}}{{3}}$. ",
    r"We expand $(x + {a})^2 = x^2 + {c}x + {d}$ and compare coefficients with the given polynomial. ",
    r"By the Pythagorean theorem, the hypotenuse has length $\sqrt{{{a}^2 + {b}^2}}$. ",
    r"There are $\binom{{{a}}}{{2}} = \frac{{{a} \cdot {e}}}{{2}}$ ways to choose the pair. ",
    r"Since $\angle ABC = {a}^\circ$, the remaining angle is $180^\circ - {a}^\circ$. ",
    r"Multiplying both sides by ${b}$ gives ${c}y = {d}$, and dividing, we find the value. ",
]


def _answer_kind(rng: random.Random, kind: int) -> tuple[str, str, str]:
    """(gold, an equivalent way to write it, a wrong answer) for one of 16 kinds of answer."""
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    p, q = rng.choice([(1, 2), (3, 4), (2, 5), (7, 8), (5, 3)])
    cases = [
        (str(a * b), f"{a * b}.0", str(a * b + 1)),
        (
            rf"\frac{{{p * a}}}{{{q * a + 1}}}",
            rf"\dfrac{{{p * a}}}{{{q * a + 1}}}",
            rf"\frac{{{q * a + 1}}}{{{p * a}}}",
        ),
        (rf"{a}\sqrt{{2}}", rf"\sqrt{{{2 * a * a}}}", rf"{a}\sqrt{{3}}"),
        (f"x^2 + {a + b}x + {a * b}", f"(x+{a})(x+{b})", f"(x+{a})(x-{b})"),
        (rf"(-\infty, {a}]", rf"(-\infty,{a}]", rf"(-\infty, {a})"),
        (f"({a}, {b})", f"\\left({a},{b}\\right)", f"({b}, {a + b})"),
        (f"{a}, {-b}", f"{-b}, {a}", f"{a}, {b}"),
        (
            rf"\begin{{pmatrix}} {a} & {b} \\ {b} & {a} \end{{pmatrix}}",
            rf"\begin{{pmatrix}}{a}&{b}\\{b}&{a}\end{{pmatrix}}",
            rf"\begin{{pmatrix}} {a} & {b} \\ {a} & {b} \end{{pmatrix}}",
        ),
        (f"{a}^\\circ", f"{a}", f"{a + 90}^\\circ"),
        (f"\\${a}.{b:02d}", f"{a}.{b:02d}", f"{a}.{b + 1:02d}"),
        (f"{a},{b * 10 + 100:03d}", f"{a}{b * 10 + 100:03d}", f"{a + 1},{b * 10 + 100:03d}"),
        (f"{a}\\%", f"{a}\\%", f"{a + 1}\\%"),
        (rf"\frac{{{a}\pi}}{{{b}}}", rf"\frac{{{a}}}{{{b}}}\pi", rf"\frac{{{b}\pi}}{{{a}}}"),
        (r"\text{Monday}", r"\text{Monday}", r"\text{Friday}"),
        (f"y = {a}x + {b}", f"y={a}x+{b}", f"y = {b}x + {a}"),
        (f"{a}.{b}", f"{a}.{b}0", f"{a}.{b + 1}"),
    ]
    return cases[kind % len(cases)]


def make_rollout(problems: int, group: int, seed: int) -> tuple[list[str], list[str]]:
    """``problems * group`` completions and their gold answers (MATH-solution-like texts)."""
    rng = random.Random(seed)
    completions, golds = [], []
    for i in range(problems):
        gold, equivalent, wrong = _answer_kind(rng, i)
        for j in range(group):
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            steps = [s.format(a=a, b=b, c=a + b, d=a * b, e=a - 1) for s in rng.sample(REASONING, 4)]
            answer = equivalent if j % 2 == 0 else wrong
            completions.append("".join(steps) + rf"Therefore, the answer is $\boxed{{{answer}}}$.")
            golds.append(gold if j % 3 else rf"So the answer is $\boxed{{{gold}}}$.")  # bare or solution
    return completions, golds


def time_extract(completions: list[str], golds: list[str]) -> float:
    start = time.perf_counter()
    for completion, gold in zip(completions, golds, strict=True):
        normalize_answer(extract_last_boxed(completion))
        normalize_answer(extract_gold_answer(gold))
    return time.perf_counter() - start


def time_gsm8k(completions: list[str], golds: list[str]) -> float:
    """``gsm8k_accuracy`` (strict) on the same completions: pure Python, in this process."""
    start = time.perf_counter()
    with warnings.catch_warnings():  # the text answers have no number: None, and a warning
        warnings.simplefilter("ignore")
        gsm8k_accuracy([""] * len(completions), completions, answer=golds)
    return time.perf_counter() - start


def time_serial(completions: list[str], golds: list[str]) -> tuple[float, list[float | None]]:
    """The reward's checks, in this process, one after the other."""
    _mathcheck.parse_gold.cache_clear()
    start = time.perf_counter()
    rewards: list[float | None] = []
    for completion, gold_text in zip(completions, golds, strict=True):
        gold = normalize_answer(extract_gold_answer(gold_text))
        answer = normalize_answer(extract_last_boxed(completion))
        rewards.append(None if gold is None else 0.0 if answer is None else _mathcheck.check(gold, answer, 6))
    return time.perf_counter() - start, rewards


def time_workers(completions: list[str], golds: list[str], workers: int) -> tuple[float, list[float | None]]:
    reward = MathAccuracy(num_workers=workers)
    start = time.perf_counter()
    rewards = reward([""] * len(completions), completions, answer=golds)
    return time.perf_counter() - start, rewards


def adversarial(lengths: list[int], repeats: int, names: list[str] | None) -> None:
    """Milliseconds per call of each shipped reward on each adversarial shape, at each length."""
    print(
        f"{len(SHAPES)} adversarial shapes, one completion per call, best of {repeats}; {os.cpu_count()} CPUs, "
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    rewards = shipped_rewards()
    header = f"{'shape':<50}" + "".join(f"{f'{n:,} ch':>14}" for n in lengths) + f"{'ratio':>8}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # math_accuracy names the completions past its time limit
        for name in names or list(rewards):
            reward = rewards[name]
            reward(["warm-up #### 5"])  # start-up (checker process, tokenizer) is not a call's cost
            print(f"\n{name}: ms per call (ratio: {lengths[-1]:,} against {lengths[0]:,} characters)")
            print(header)
            worst: tuple[float, str] = (0.0, "")
            for shape, build in SHAPES.items():
                times = [time_calls(reward, build(n), repeats)[0] for n in lengths]
                ratio = times[-1] / max(times[0], 1e-6)
                worst = max(worst, (times[-1], shape))
                print(f"{shape:<50}" + "".join(f"{1000 * t:>14.2f}" for t in times) + f"{ratio:>8.1f}")
            print(f"slowest at {lengths[-1]:,} characters: {1000 * worst[0]:.1f} ms ({worst[1]})")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=128)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="measurements per system (median reported)")
    parser.add_argument(
        "--adversarial", action="store_true", help="every shipped reward on adversarial shapes"
    )
    parser.add_argument("--chars", type=int, nargs="+", default=[16_000, 32_000, 200_000])
    parser.add_argument("--rewards", nargs="+", default=None, help="with --adversarial: these rewards only")
    args = parser.parse_args()
    if args.adversarial:
        adversarial(args.chars, args.repeats, args.rewards)
        return
    n = args.problems * args.group
    print(
        f"{n} completions ({args.problems} problems x {args.group}), {os.cpu_count()} CPUs, "
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    logging_quiet()
    warm_completions, warm_golds = make_rollout(16, 2, seed=-1)  # math-verify's lazy set-up, once
    time_serial(warm_completions, warm_golds)
    for k in args.workers:  # start-up, measured on its own
        start = time.perf_counter()
        shared_pool(k).run([["gold", "1"]] * k, None)
        print(f"start-up of {k} checker process(es): {time.perf_counter() - start:.2f} s")

    pool = shared_pool(1)
    start = time.perf_counter()
    pool.run([["gold", "1"]] * n, None)  # parsed once, then answered from the process's cache
    print(f"round trip of a request answered from cache: {1000 * (time.perf_counter() - start) / n:.3f} ms")

    results: dict[str, list[float]] = {"extract": [], "gsm8k": [], "serial": []} | {
        f"workers={k}": [] for k in args.workers
    }
    seed = 0
    for _ in range(args.repeats):  # interleaved, so load changes hit every system alike
        seed += 1
        completions, golds = make_rollout(args.problems, args.group, seed)
        results["extract"].append(time_extract(completions, golds))
        results["gsm8k"].append(time_gsm8k(completions, golds))
        seconds, serial = time_serial(completions, golds)
        results["serial"].append(seconds)
        for k in args.workers:
            seed += 1
            completions, golds = make_rollout(args.problems, args.group, seed)
            seconds, rewards = time_workers(completions, golds, k)
            results[f"workers={k}"].append(seconds)
        _, serial_check = time_serial(completions, golds)
        assert rewards == serial_check, "the worker path and the serial path disagree"
    correct = sum(r == 1.0 for r in serial) / n
    print(f"share scored 1.0: {correct:.3f} (half of each group is written to be right)")
    base = statistics.median(results["serial"])
    print(f"{'system':<12} {'ms / completion':>16} {'s / rollout':>12} {'vs serial':>10}")
    for name, seconds in results.items():
        median = statistics.median(seconds)
        print(f"{name:<12} {1000 * median / n:>16.3f} {median:>12.3f} {median / base:>10.2f}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def logging_quiet() -> None:
    """math-verify says once per process that its own timeout is off (the serial path has none)."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)


if __name__ == "__main__":
    main()
