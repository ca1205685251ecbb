"""Reward functions in worker processes, with a time limit on every call.

A reward that hangs (a pathological expression for a symbolic checker, a stuck network call) or
kills its process (a segfault in a native parser) must not stall or end a training run. With
``reward_workers > 0`` each completion is scored by one call ``f(prompts=[p], completions=[c],
**row)`` in one of that many worker processes. A call that runs past ``timeout`` seconds has its
worker killed and replaced; a worker that dies is replaced; either way the completion is reported
by reward name and sample. Worker processes run the reward on their main thread, so signal-based
time limits inside a reward work there.

A batch's time stays bounded however badly a reward behaves:

* a replacement worker starts in the background; the other workers go on meanwhile, and its time
  limit counts from its first call, not from its start (spawn and imports can take seconds);
* with ``fail_fast`` (``reward_errors="raise"``) the batch stops at its first failure, which is
  raised: a reward that hangs fails after one time limit;
* otherwise a reward stops being called for the rest of the batch once :data:`STRIKES` of its calls
  timed out or crashed their worker and they outnumber its calls that answered: a reward that hangs
  on every input costs about two time limits and one restart (one time limit with two workers or
  more), not one per completion, while one that hangs on a few inputs still scores the others.

The processes are :mod:`grpo_lightning.isolation`'s: each worker is a fresh interpreter (safe with
CUDA and threads) that imports the rewards' modules with the training process's ``sys.path``, and
nothing else: the reward functions must be picklable, i.e. defined at module level (registered
rewards and import paths are). One defined in the training script makes the workers import that
script, as ``multiprocessing``'s spawn does, so the script must keep its entry point under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import pickle
import sys
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grpo_lightning.isolation.pool import Crashed, ProcessPool, Raised, TimedOut

#: Timeouts and crashes of one reward in a batch after which, when they also outnumber its answered
#: calls, its remaining calls of the batch are not made (they fail, and the first failure says why).
STRIKES = 2


@dataclass(frozen=True)
class CallFailure:
    """Why a call gave no result: ``"timed out after 5s"``, ``"crashed its worker (exit code -11)"``,
    ``"raised ValueError: ..."``."""

    reason: str


@dataclass(frozen=True)
class NotCalled(CallFailure):
    """A call not made: ``hard`` of the reward's ``calls`` so far in the batch had timed out or
    crashed their worker (see :data:`STRIKES`)."""

    hard: int = 0
    calls: int = 0


@dataclass(frozen=True)
class _Values:
    """A reward as called in a worker: its values as a list (a tensor, an array or a generator cannot
    all be sent back as they are)."""

    fn: Callable[..., Any]

    def __call__(self, **kwargs: Any) -> list[Any]:
        values = self.fn(**kwargs)
        return values.tolist() if hasattr(values, "tolist") else list(values)


@dataclass
class _Batch:
    """One :meth:`RewardWorkerPool.map`, as the pool's :class:`~grpo_lightning.isolation.pool.Jobs`:
    the calls still to send, the results, and per function the calls that failed hard (timed out,
    crashed their worker) and those that answered."""

    tasks: Sequence[tuple[int, dict[str, Any]]]
    fail_fast: bool
    calls: list[tuple[int, tuple[Any, ...], dict[str, Any]]] = field(init=False)
    results: list[Any] = field(init=False)
    pending: deque[int] = field(init=False)
    hard: Counter[int] = field(default_factory=Counter)
    answered: Counter[int] = field(default_factory=Counter)
    stopped: bool = False  # fail_fast and a call failed

    def __post_init__(self) -> None:
        self.calls = [(k, (), kwargs) for k, kwargs in self.tasks]
        self.results = [None] * len(self.tasks)
        self.pending = deque(range(len(self.tasks)))

    def settle(self, task: int, outcome: Any) -> None:
        """Record a call's values or why it gave none (in the words of the reward's failure report)."""
        if isinstance(outcome, TimedOut):
            self.record(task, CallFailure(f"timed out after {outcome.seconds:g}s"), hard=True)
        elif isinstance(outcome, Crashed):
            self.record(
                task, CallFailure(f"crashed its worker process (exit code {outcome.exit_code})"), hard=True
            )
        elif isinstance(outcome, Raised):
            self.record(task, CallFailure(f"raised {outcome.error}"))
        else:
            self.record(task, outcome)

    def record(self, task: int, result: Any, hard: bool = False) -> None:
        k = self.tasks[task][0]
        self.results[task] = result
        if hard:
            self.hard[k] += 1
        else:  # a value, or an exception the reward raised: it answered
            self.answered[k] += 1
        self.stopped |= self.fail_fast and isinstance(result, CallFailure)

    def given_up(self, k: int) -> bool:
        """Function ``k`` timed out or crashed too often in this batch to be called again."""
        return self.hard[k] >= STRIKES and self.hard[k] > self.answered[k]

    def take(self, slot: int) -> int | None:
        """The next task to send (any worker takes any); those of a function given up on fail here
        without a call."""
        while self.pending and not self.stopped:
            task = self.pending.popleft()
            k = self.tasks[task][0]
            if not self.given_up(k):
                return task
            calls = self.hard[k] + self.answered[k]
            self.results[task] = NotCalled(
                f"was not called: {self.hard[k]} of its {calls} calls so far in this batch had timed out or "
                "crashed their worker",
                self.hard[k],
                calls,
            )
        return None

    def waiting(self) -> bool:
        return bool(self.pending)


class RewardWorkerPool(ProcessPool):
    """``num_workers`` processes that call ``funcs`` with a per-call time limit.

    Args:
        funcs: the reward functions (picklable); tasks name them by index.
        num_workers: processes to start (on first use).
        timeout: seconds one call may take (None: no limit).
    """

    def __init__(self, funcs: Sequence[Callable[..., Any]], num_workers: int, timeout: float | None) -> None:
        if num_workers < 1:
            raise ValueError(f"reward_workers={num_workers}: a worker pool needs at least 1 process.")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"reward_timeout={timeout} must be > 0 seconds, or None for no limit.")
        interactive = getattr(sys.modules["__main__"], "__file__", None) is None
        for fn in funcs:
            name = getattr(fn, "__name__", fn)
            try:
                pickled = pickle.dumps(fn)
            except Exception as err:
                raise ValueError(
                    f"The reward {name!r} cannot be sent to a worker process ({err}). Define "
                    "it at module level (or register it / give its import path), or set reward_workers=0."
                ) from err
            if interactive and b"__main__" in pickled:
                raise ValueError(
                    f"The reward {name!r} is defined in an interactive session (a notebook, python -c), which a "
                    "worker process cannot import. Put it in a .py file beside the notebook and import it from "
                    "there (or give its import path, 'my_rewards:my_reward'), or set reward_workers=0."
                )
        super().__init__(
            [_Values(fn) for fn in funcs],
            num_workers,
            "reward worker",
            hint="The reward functions must be importable in a fresh process: give a reward as an import path "
            "('my_module:my_reward') run from the folder that holds my_module.py, or add that folder to "
            "PYTHONPATH (or set reward_workers=0 to score in the training process).",
        )
        self.funcs = list(funcs)
        self.timeout = timeout

    def map(self, tasks: Sequence[tuple[int, dict[str, Any]]], fail_fast: bool = False) -> list[Any]:
        """Run ``funcs[k](**kwargs)`` for every ``(k, kwargs)``; one result per task, in order: the
        returned list of values, or a :class:`CallFailure`. With ``fail_fast`` the batch stops at the
        first failure: the tasks it did not finish are None (see the module docstring for the bounds).
        Raises :class:`~grpo_lightning.isolation.pool.WorkerStartError` when a worker cannot start."""
        batch = _Batch(tasks, fail_fast)
        self.serve(batch, self.timeout)
        return batch.results


class PoolView:
    """Some of a pool's functions, numbered from 0 in the order of ``keep`` (indices into
    ``pool.funcs``): a scorer over a subset of the rewards shares the pool's running workers."""

    def __init__(self, pool: RewardWorkerPool, keep: Sequence[int]) -> None:
        self.pool = pool
        self.keep = list(keep)
        self.funcs = [pool.funcs[k] for k in self.keep]
        self.num_workers = pool.num_workers
        self.timeout = pool.timeout

    def map(self, tasks: Sequence[tuple[int, dict[str, Any]]], fail_fast: bool = False) -> list[Any]:
        """:meth:`RewardWorkerPool.map` with this view's function numbers."""
        return self.pool.map([(self.keep[k], kwargs) for k, kwargs in tasks], fail_fast=fail_fast)

    def close(self) -> None:
        """The workers are the pool's: its owner closes them."""


def _row(columns: Mapping[str, Any], i: int, n: int) -> dict[str, Any]:
    """Completion ``i``'s share of the per-completion columns (lists of length ``n``); others as they are."""
    return {k: [v[i]] if isinstance(v, (list, tuple)) and len(v) == n else v for k, v in columns.items()}


def score_in_workers(
    pool: RewardWorkerPool | PoolView,
    names: Sequence[str],
    prompts: Sequence[str],
    completions: Sequence[str],
    columns: Mapping[str, Any],
    fail_fast: bool = False,
) -> tuple[list[list[Any]], list[tuple[int, int, CallFailure]]]:
    """Score every completion with every function, one call each, in ``pool``.

    Returns one list of N values per function (None where a call failed or, with ``fail_fast``, was
    not made) and the failures as ``(function index, completion index, failure)``: with
    ``fail_fast`` at least one when any call failed. Tensor columns are sent as lists.
    """
    n = len(completions)
    plain = {
        k: v.tolist() if hasattr(v, "tolist") and not isinstance(v, (int, float)) else v
        for k, v in columns.items()
    }
    tasks = [
        (k, {"prompts": [prompts[i]], "completions": [completions[i]], **_row(plain, i, n)})
        for k in range(len(names))
        for i in range(n)
    ]
    results = pool.map(tasks, fail_fast=fail_fast)
    values: list[list[Any]] = [[None] * n for _ in names]
    failures: list[tuple[int, int, CallFailure]] = []
    for (k, _), result, i in zip(tasks, results, [i for _ in names for i in range(n)], strict=True):
        if result is None:
            continue  # not made: the batch stopped at a failure (fail_fast)
        if isinstance(result, CallFailure):
            failures.append((k, i, result))
        elif len(result) != 1:
            failures.append((k, i, CallFailure(f"returned {len(result)} values for 1 completion")))
        else:
            values[k][i] = result[0]
    return values, _say_skipped(failures)


def _say_skipped(failures: list[tuple[int, int, CallFailure]]) -> list[tuple[int, int, CallFailure]]:
    """A function's first failure is the one reported: it also says how many of its calls were not made."""
    out = list(failures)
    for k in {f[0] for f in failures}:
        mine = [j for j, f in enumerate(failures) if f[0] == k]
        skipped = [failures[j][2] for j in mine if isinstance(failures[j][2], NotCalled)]
        first = failures[mine[0]]
        if skipped and not isinstance(first[2], NotCalled):
            last = skipped[-1]
            assert isinstance(last, NotCalled)
            reason = (
                f"{first[2].reason}; after {last.hard} of its {last.calls} calls had timed out or crashed "
                f"their worker, its other {len(skipped)} calls of this batch were not made"
            )
            out[mine[0]] = (first[0], first[1], CallFailure(reason))
    return out
