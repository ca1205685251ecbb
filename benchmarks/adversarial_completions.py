"""Adversarial completions of many shapes, and every shipped reward run on them one call at a time.

The shapes are what makes text matching slow: long whitespace runs before and after markers,
unclosed and deeply nested braces, repeated markers, long digit runs, signs and brackets, think tags.
Each builder gives a completion of about ``n`` characters. The gold answer is always ``5``.

    python benchmarks/adversarial_completions.py --chars 200000                  # every reward
    python benchmarks/adversarial_completions.py --chars 200000 --rewards format_reward

prints one line per (reward, shape): ``reward<TAB>shape<TAB>seconds<TAB>reward value``, flushed as it
goes, so a caller that stops a run that takes too long knows which shape it was on. The test
``tests/test_rewards_linear_time.py`` runs this with a time limit; ``bench_rewards.py --adversarial``
times it at several lengths.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOLD = "5"
#: Characters of a box's content that reach math-verify at most (``_normalize.MAX_ANSWER_CHARS``).
BOX_CONTENT_CHARS = 990


def _repeat(unit: str, n: int) -> str:
    """``unit`` repeated to about ``n`` characters (at least once)."""
    return unit * max(1, n // len(unit))


def _in_box(content: str, n: int) -> str:
    """A box with ``content`` (at most ``BOX_CONTENT_CHARS``, so it is parsed) after ``n`` characters of text."""
    return _repeat("x ", n) + "\\boxed{" + content + "}"


SHAPES: dict[str, Callable[[int], str]] = {
    # Whitespace runs before and after the markers, then something that makes a match fail.
    "spaces after the answer line, then a letter": lambda n: "x #### 5" + " " * n + "a",
    "spaces after a box, then a letter": lambda n: "x \\boxed{5}" + " " * n + "a",
    "blank lines after the answer, then a letter": lambda n: "x #### 5\n" + _repeat(" \n", n) + "a",
    "spaces before the answer line": lambda n: "x" + " " * n + "#### 5",
    "spaces before a box": lambda n: "x" + " " * n + "\\boxed{5}",
    "spaces after the marker": lambda n: "x ####" + " " * n + "5",
    "spaces inside a box": lambda n: "x \\boxed{" + " " * n + "5}",
    "closing punctuation after a box, then a letter": lambda n: "x \\boxed{5}" + _repeat("$.*\\]) ", n) + "a",
    # Unclosed, repeated and nested braces.
    "unclosed boxes": lambda n: _repeat("\\boxed{", n),
    "unclosed boxes after a box": lambda n: "\\boxed{5} " + _repeat("\\boxed{", n),
    "unclosed fraction boxes": lambda n: _repeat("So the answer is \\boxed{\\frac{1}{2} ", n),
    "boxes without braces": lambda n: _repeat("\\boxed ", n) + "{",
    "escaped braces in a box": lambda n: "\\boxed{" + _repeat("\\{", n),
    "deep brace nesting": lambda n: "{" * (n // 2) + "\\boxed{5}" + "}" * (n // 2),
    "deep parentheses around a number": lambda n: "(" * (n // 2) + "5" + ")" * (n // 2),
    "signs and parentheses": lambda n: _repeat("-(", n) + "5",
    "nested fractions": lambda n: _repeat("\\frac{1}{", n) + "5" + "}" * (n // 9),
    # Repeated markers.
    "repeated markers": lambda n: _repeat("####", n),
    "repeated answer lines": lambda n: _repeat("#### 5\n", n),
    "markdown headings": lambda n: _repeat("#### Step 1: add\n", n),
    "a run of hashes": lambda n: "x " + "#" * n + " 5",
    "a long answer line": lambda n: "x #### " + "9" * n,
    # Numbers.
    "one long digit run": lambda n: "5" * n,
    "many numbers": lambda n: _repeat("5 ", n),
    "a chain of divisions": lambda n: _repeat("5/", n),
    "thousands separators": lambda n: _repeat("5,", n) + "000",
    "digit groups in a box": lambda n: "\\boxed{" + _repeat("1\\,000", n),
    "dollar signs": lambda n: _repeat("$", n) + "5",
    # Think tags.
    "think tags": lambda n: _repeat("<think>", n),
    "think blocks": lambda n: _repeat("<think>a</think> 5 ", n),
    "whitespace around think tags": lambda n: (
        "<think>" + " " * (n // 2) + "</think>" + " " * (n // 2) + "<think>"
    ),
    # Non-ASCII text.
    "unicode": lambda n: _repeat("é😀中 ", n) + "#### 5",
    # Box contents that reach math-verify, after long reasoning (the checker's time limit holds).
    "parentheses in a box": lambda n: _in_box(
        "(" * (BOX_CONTENT_CHARS // 2) + ")" * (BOX_CONTENT_CHARS // 2), n
    ),
    "spaces in a box, then a letter": lambda n: _in_box(" " * BOX_CONTENT_CHARS + "a", n),
    "a power tower in a box": lambda n: _in_box("10^{" * 200 + "10" + "}" * 200, n),
    "a long sum in a box": lambda n: _in_box("1+" * (BOX_CONTENT_CHARS // 2) + "1", n),
    "an equation chain in a box": lambda n: _in_box("x=" * (BOX_CONTENT_CHARS // 2) + "5", n),
}


def shipped_rewards() -> dict[str, Callable[[Sequence[str]], list[float | None]]]:
    """Every shipped reward as a function of the completions (the gold answer is ``GOLD``)."""
    from grpo_lightning.hf.tiny import build_char_tokenizer
    from grpo_lightning.rewards import (
        LengthPenalty,
        MathAccuracy,
        OverlongPenalty,
        format_reward,
        gsm8k_accuracy,
        gsm8k_accuracy_flexible,
        think_format_reward,
    )

    math = MathAccuracy(timeout_seconds=5)
    tokenizer = build_char_tokenizer(model_max_length=10**7)
    overlong = OverlongPenalty(max_length=4096, tokenizer=tokenizer)  # counts tokens by tokenizing
    length = LengthPenalty(max_length=4096, unit="chars")

    def call(reward: Callable[..., list[float | None]], **columns: object):
        return lambda completions: reward([""] * len(completions), list(completions), **columns)

    return {
        "format_reward": call(format_reward),
        "think_format_reward": call(think_format_reward),
        "gsm8k_accuracy": lambda cs: gsm8k_accuracy([""] * len(cs), list(cs), answer=[GOLD] * len(cs)),
        "gsm8k_accuracy_flexible": lambda cs: gsm8k_accuracy_flexible(
            [""] * len(cs), list(cs), answer=[GOLD] * len(cs)
        ),
        "math_accuracy": lambda cs: math([""] * len(cs), list(cs), answer=[GOLD] * len(cs)),
        "overlong_penalty": call(overlong),
        "length_penalty": call(length),
    }


def time_calls(
    reward: Callable[[Sequence[str]], list[float | None]], completion: str, repeats: int = 1
) -> tuple[float, float | None]:
    """(seconds per call, the reward) of ``reward`` on one completion, the fastest of ``repeats`` calls."""
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = reward([completion])[0]
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=200_000, help="length of each completion")
    parser.add_argument("--rewards", nargs="+", default=None, help="names (default: all shipped rewards)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # math_accuracy warns about its time limit, by design
    rewards = shipped_rewards()
    for name in args.rewards or list(rewards):
        reward = rewards[name]
        reward(["warm-up #### 5"])  # start-up (the checker process, imports) is not a call's cost
        for shape, build in SHAPES.items():
            seconds, value = time_calls(reward, build(args.chars))
            print(f"{name}\t{shape}\t{seconds:.4f}\t{value}", flush=True)


if __name__ == "__main__":
    main()
