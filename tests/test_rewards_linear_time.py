"""Every shipped reward finishes on adversarial completions of 200,000 characters, and its Python work
grows linearly on fuzzed repetitive inputs.

Timing is not asserted. The first test runs each reward on each shape of
``benchmarks/adversarial_completions.py`` in a subprocess with a generous time limit: a linear reward
needs well under a second per call, while a quadratic one needs minutes to hours per call at this
length (``format_reward`` took 1.7 s at 16,000 characters, 7 s at 32,000). The second counts
executed Python lines (deterministic, independent of the machine's load) on ``k`` and ``4k``
repetitions of random pieces.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import answers_first_window, count_executed_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpo_lightning.rewards import _normalize, answers, gsm8k, number_reader
from grpo_lightning.rewards import format as format_module

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "adversarial_completions.py"
sys.path.insert(0, str(SCRIPT.parent))
from adversarial_completions import SHAPES  # noqa: E402

CHARS = 200_000
REWARDS = [
    "format_reward",
    "think_format_reward",
    "gsm8k_accuracy",
    "gsm8k_accuracy_flexible",
    "math_accuracy",  # extraction here, math-verify in checker processes with their time limit
    "overlong_penalty",  # counting tokens with a tokenizer
    "length_penalty",
]
# For every shape together, start-up included: at least 20x what a linear reward needs on a busy
# 2-core machine, and far less than one call of a quadratic one.
TIME_LIMIT_S = 300
VALUES = {
    "format_reward": {"0.0", "1.0"},
    "think_format_reward": {"0.0", "1.0"},
    "gsm8k_accuracy": {"0.0", "1.0"},
    "gsm8k_accuracy_flexible": {"0.0", "1.0"},
    "math_accuracy": {"0.0", "1.0", "None"},  # None: the checker's time limit
}


def _text(output: str | bytes | None) -> str:
    return output.decode() if isinstance(output, bytes) else output or ""


@pytest.mark.slow
@pytest.mark.parametrize("reward", REWARDS)
def test_every_shipped_reward_finishes_on_adversarial_200k_completions(reward):
    command = [sys.executable, str(SCRIPT), "--chars", str(CHARS), "--rewards", reward]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=TIME_LIMIT_S, cwd=ROOT)
    except subprocess.TimeoutExpired as err:
        done = [line.split("\t")[1] for line in _text(err.stdout).splitlines()]
        stuck = next((shape for shape in SHAPES if shape not in done), "start-up")
        pytest.fail(f"{reward} did not finish {len(SHAPES)} calls in {TIME_LIMIT_S} s; stuck on {stuck!r}")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split("\t") for line in run.stdout.splitlines()]
    assert [row[1] for row in rows] == list(SHAPES)
    values = {row[3] for row in rows}
    if reward in VALUES:
        assert values <= VALUES[reward], values
    else:  # length penalties: -1.0 at the limit of 4,096
        assert values == {"-1.0"}


# --- Linear Python work on fuzzed inputs ---------------------------------------------------------

TRACED_FILES = {m.__file__ for m in (answers, number_reader, gsm8k, _normalize, format_module)}
PIECES = [
    " ", "  ", "\n", "\t", "x", "a", "5", "12", ",", ".", "/", "-", "−", "+", "$", "\\$", "(", ")", "[",
    "]", "{", "}", "\\{", "\\left(", "\\right)", "\\frac{", "\\boxed{", "\\boxed", "\\fbox{", "####",
    "#", "<think>", "</think>", "Final Answer:", "\\text{", "%", "^\\circ", "\\,", "{,}",
    # Whole motifs, so that short lists of pieces reach every path.
    "#### 5\n", "x #### 5", "\n#### 10", "\\boxed{5}", "\\boxed{5}$.", "-(1/3)", "\\frac{-1}{3}",
    "<think>a</think> 5", "#### Step 1: add\n",
]  # fmt: skip
CHECKS = {
    "answer_format": format_module.answer_format,
    "think_format": format_module.think_format,
    "gsm8k strict": gsm8k.Gsm8kAccuracy("strict").predicted_number,
    "gsm8k flexible": gsm8k.Gsm8kAccuracy("flexible").predicted_number,
    "math extraction": lambda text: _normalize.normalize_answer(answers.extract_last_boxed(text)),
}


def count_lines(fn, *args) -> int:
    """Python lines executed in the traced modules while running ``fn(*args)``."""
    return count_executed_lines(TRACED_FILES, fn, *args)


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("shape", SHAPES)
def test_python_work_grows_linearly_on_every_adversarial_shape(shape, check):
    with answers_first_window(64):
        small = count_lines(CHECKS[check], SHAPES[shape](500))
        large = count_lines(CHECKS[check], SHAPES[shape](2000))
    assert large <= 4 * small * 1.25 + 200, (small, large)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=6),
    st.lists(st.sampled_from(PIECES), max_size=4),
    st.sampled_from(list(CHECKS)),
)
def test_python_work_grows_linearly_on_repeated_pieces(unit, tail, check):
    # A unit repeated k and 4k times (plus a fixed tail): 4x the input may cost at most about 4x the
    # work. A quadratic scan (each marker rescanning the rest) gives 16x.
    unit_text, tail_text = "".join(unit), "".join(tail)
    k = max(1, 300 // len(unit_text))
    with answers_first_window(64):
        small = count_lines(CHECKS[check], unit_text * k + tail_text)
        large = count_lines(CHECKS[check], unit_text * 4 * k + tail_text)
    assert large <= 4 * small * 1.25 + 200, (small, large)
