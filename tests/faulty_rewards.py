"""Module-level reward functions that misbehave on purpose (worker processes import them by name)."""

from __future__ import annotations

import os
import signal
import time


def sleepy(prompts, completions, **columns):
    """1.0 per completion, but hangs on a completion that says "hang"."""
    if any("hang" in c for c in completions):
        time.sleep(600)
    return [1.0] * len(completions)


def crashy(prompts, completions, **columns):
    """1.0 per completion, but kills its process on a completion that says "crash" (like a segfault)."""
    if any("crash" in c for c in completions):
        os._exit(3)
    return [1.0] * len(completions)


def picky(prompts, completions, answer, **columns):
    """1.0 when the completion equals the answer; raises on a completion that says "bad"."""
    if any("bad" in c for c in completions):
        raise ValueError("cannot parse this one")
    return [float(c == a) for c, a in zip(completions, answer, strict=True)]



def completion_length(prompts, completions, **columns):
    """The length of each completion: a reward that behaves, and imports nothing heavy in a worker."""
    return [float(len(c)) for c in completions]


_calls = 0


def sigterm_on_third_call(prompts, completions, **columns):
    """A dense reward (character codes) whose third call in a process sends SIGTERM to that process,
    as a cluster scheduler would during the third training step."""
    global _calls
    _calls += 1
    if _calls == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return [sum(map(ord, c)) / (128 * max(len(c), 1)) for c in completions]


# Set by a test to make this module slow to import in worker processes (not in the test's own),
# like a reward module that imports a large library.
if os.environ.get("GRPO_TEST_SLOW_IMPORT_S") and os.environ.get("GRPO_TEST_PARENT_PID") != str(os.getpid()):
    time.sleep(float(os.environ["GRPO_TEST_SLOW_IMPORT_S"]))


def torch_loaded(prompts, completions, **columns):
    """1.0 per completion where this process has imported torch, else 0.0: shows what a worker loaded."""
    import sys

    return [float("torch" in sys.modules)] * len(completions)
