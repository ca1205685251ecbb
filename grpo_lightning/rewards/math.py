"""MATH-style reward: the completion's last ``\\boxed{}`` checked against the gold answer with math-verify.

The contract (docs/rewards.md has the full list and the differences from TRL and verl):

1. The prediction is the content of the completion's last complete ``\\boxed{}``/``\\fbox{}``
   (found by a linear scan from the end). No box: 0.0.
2. The gold is the ``answer`` column: a bare answer, a MATH solution (its last box) or a GSM8K
   answer text (its ``#### N``).
3. Both are normalised (``grpo_lightning.rewards._normalize``: digit groups, a trailing full stop,
   ``$``, units in ``\\text{}``, degrees) and read by math-verify, which compares symbolically
   (``\\frac{1}{2}`` == ``0.5``, ``\\sqrt{8}`` == ``2\\sqrt{2}``, intervals, sets, matrices, text).
4. 1.0 if equivalent, else 0.0 (also for a box that cannot be read or is over 1,000 characters);
   None (not applicable) when the gold cannot be read to a finite value (one warning per reward
   object) or when checking took longer than ``timeout_seconds`` (one warning per completion).

math-verify runs in separate checker processes (``_checker_pool``), so the time limit holds on
any thread, in any process, and even inside sympy's C code: a completion that runs past it gets its
process killed and replaced. A process starts in well under a second and is then reused.
"""

from __future__ import annotations

import math
import numbers
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import grpo_lightning.rewards._mathcheck as _mathcheck
from grpo_lightning.rewards._checker_pool import Failed, shared_pool
from grpo_lightning.rewards._columns import gold_column, short
from grpo_lightning.rewards._normalize import normalize_answer
from grpo_lightning.rewards.answers import extract_gold_answer, extract_last_boxed
from grpo_lightning.rewards.conversation import completion_texts
from grpo_lightning.rewards.registry import register_reward

_GOLD_PROBLEMS = {
    _mathcheck.GOLD_UNPARSEABLE: "cannot be read by math-verify",
    _mathcheck.GOLD_NOT_FINITE: "reads as something without a finite value (such as 5/0)",
}
_GOLD_CACHE_SIZE = 100_000


def _gold_key(gold: str) -> int:
    """A stable key per gold answer: its parse and its checks go to the same checker process (which
    caches the parse), where the load allows."""
    return zlib.crc32(gold.encode("utf-8", "surrogatepass"))


class MathAccuracy:
    """Reward 1.0 if the last ``\\boxed{}`` of the completion is equivalent to the gold answer, else 0.0.

    Args:
        answer_column: the column holding the gold answer: a bare answer (``\\frac{14}{3}``), a MATH
            solution (its last ``\\boxed{}`` is used) or a GSM8K answer text (its ``#### N``).
        timeout_seconds: hard limit on checking one completion (parsing and comparing), in seconds;
            None: no limit. A completion past it scores None and is named in a warning.
        float_rounding: decimal places math-verify rounds floats to before comparing.
        num_workers: checker processes working in parallel (each holds sympy, about 100 MB).

    Returns 0.0 for a completion without a complete ``\\boxed{}`` or whose box cannot be parsed, and
    None (not applicable) when the gold answer itself cannot be parsed to a finite value: that is a
    data problem, not a wrong completion, so it must not pull the group's statistics down.
    """

    __name__ = "math_accuracy"

    def __init__(
        self,
        answer_column: str = "answer",
        timeout_seconds: float | None = 5,
        float_rounding: int = 6,
        num_workers: int = 1,
    ) -> None:
        if timeout_seconds is not None and not (
            isinstance(timeout_seconds, numbers.Real)
            and math.isfinite(timeout_seconds)
            and timeout_seconds > 0
        ):
            raise ValueError(
                f"timeout_seconds must be a positive number of seconds or None (no limit), got {timeout_seconds!r}."
            )
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be a whole number >= 1, got {num_workers!r}.")
        self.answer_column = answer_column
        self.timeout_seconds = timeout_seconds
        self.float_rounding = float_rounding
        self.num_workers = num_workers
        self._gold_status: dict[str, str] = {}
        self.unusable_golds = 0  # completions scored None for their gold answer (warned about once)

    def extract_answer(self, completion: str) -> str | None:
        """The answer this completion votes for in maj@k: its last box's content, normalised as for
        scoring (None without a box). Equivalent answers written differently (``0.5``, ``\\frac{1}{2}``)
        are separate votes."""
        return normalize_answer(extract_last_boxed(completion))

    def score(self, completion: str, gold_text: str | None) -> float | None:
        """The reward of one completion against one gold answer text."""
        return self.score_many([completion], [gold_text])[0]

    def score_many(self, completions: Sequence[str], gold_texts: Sequence[Any]) -> list[float | None]:
        """The rewards of ``completions`` against their gold answer texts (one per completion)."""
        golds = [normalize_answer(extract_gold_answer(g)) for g in gold_texts]
        answers = [self.extract_answer(c) for c in completions]
        failed = self._check_golds([g for g in golds if g is not None])
        rewards: list[float | None] = [None] * len(completions)
        todo = []
        for i, (gold, answer) in enumerate(zip(golds, answers, strict=True)):
            status = None if gold is None else failed.get(gold, self._gold_status.get(gold))
            if status != _mathcheck.GOLD_OK:
                self._warn_gold(gold_texts[i], gold, status)
            elif answer is None:
                rewards[i] = 0.0
            else:
                todo.append(i)
        pool = shared_pool(self.num_workers)
        requests = [["check", golds[i], answers[i], self.float_rounding] for i in todo]
        keys = [_gold_key(golds[i]) for i in todo]
        for i, reply in zip(todo, pool.run(requests, self.timeout_seconds, keys), strict=True):
            if isinstance(reply, Failed):
                warnings.warn(
                    f"math_accuracy scored a completion None (not applicable) because {reply.reason}. "
                    f"Boxed answer: {short(answers[i])!r}; gold: {short(golds[i])!r}.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            else:
                rewards[i] = reply
        return rewards

    def _check_golds(self, golds: list[str]) -> dict[str, str]:
        """Read each gold answer not seen before once, so a bad one costs one check, not G.

        Returns the golds whose check failed this time (a time limit on a busy machine, a crashed
        checker) with the reason: those are not remembered, so the next rollout checks them again
        instead of dropping that problem for the rest of the run.
        """
        new = list(dict.fromkeys(g for g in golds if g not in self._gold_status))
        if not new:
            return {}
        if len(self._gold_status) + len(new) > _GOLD_CACHE_SIZE:
            self._gold_status.clear()
        pool = shared_pool(self.num_workers)
        replies = pool.run([["gold", g] for g in new], self.timeout_seconds, [_gold_key(g) for g in new])
        failed: dict[str, str] = {}
        for gold, reply in zip(new, replies, strict=True):
            if isinstance(reply, Failed):
                failed[gold] = f"could not be read: {reply.reason}"
            else:
                self._gold_status[gold] = reply
        return failed

    def _warn_gold(self, gold_text: Any, gold: str | None, status: str | None) -> None:
        """Count a gold answer scored None; warn about the first one only."""
        self.unusable_golds += 1
        if self.unusable_golds > 1:
            return
        status = "holds no answer" if gold is None else (status or "")
        warnings.warn(
            f"math_accuracy: the gold answer {short(gold_text)!r} "
            f"{_GOLD_PROBLEMS.get(status, status)}, so its completions score None (left out of the "
            f"statistics). Further unusable gold answers are counted in .unusable_golds without a warning.",
            RuntimeWarning,
            stacklevel=4,
        )

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Any
    ) -> list[float | None]:
        golds = gold_column(columns, self.answer_column, len(completions), self.__name__)
        return self.score_many(completion_texts(completions), golds)

    def __repr__(self) -> str:
        return (
            f"MathAccuracy(answer_column={self.answer_column!r}, timeout_seconds={self.timeout_seconds}, "
            f"float_rounding={self.float_rounding}, num_workers={self.num_workers})"
        )


def math_accuracy_reward(
    answer_column: str = "answer",
    timeout_seconds: float | None = 5,
    float_rounding: int = 6,
    num_workers: int = 1,
) -> MathAccuracy:
    """Factory for YAML and notebooks: ``math_accuracy_reward(answer_column="final_answer")``."""
    return MathAccuracy(
        answer_column=answer_column,
        timeout_seconds=timeout_seconds,
        float_rounding=float_rounding,
        num_workers=num_workers,
    )


math_accuracy = register_reward("math_accuracy")(MathAccuracy())
