"""``math_accuracy``'s checker processes: math-verify runs in :mod:`grpo_lightning.isolation` children.

A slow check (math-verify on sympy) can take unbounded time on a degenerate answer, and inside one
process nothing stops it reliably, so checks run in child processes with a hard time limit: a check
past it gets its process killed (and replaced) and is answered with a :class:`Failed`. On top of the
pool, two rules of the checker's own: a check whose process died is retried once on a new process
(out of memory on a neighbour's account is not a verdict), and checks with equal keys (one gold
answer's) go to the same process where the load allows, since a process caches what it parsed.

Pools are shared per process (:func:`shared_pool`): a forked child (a DataLoader worker) starts
its own and never touches its parent's.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpo_lightning.rewards._mathcheck as _mathcheck
from grpo_lightning.isolation.pool import Crashed, ProcessPool, Raised, TimedOut


@dataclass(frozen=True)
class Failed:
    """The answer to a request that got none: it ran past its time limit (its process was killed
    and replaced), its process died twice while on it (out of memory, a crash), or the checker raised."""

    reason: str


class CheckerPool(ProcessPool):
    """``num_workers`` checker processes; :meth:`run` answers requests in parallel.

    Args:
        num_workers: how many requests run at once.
        handle: answers one request (module level, picklable): ``_mathcheck.handle``.
        setup: run once in each process before its first request (imports).
    """

    def __init__(
        self,
        num_workers: int,
        handle: Callable[[list[Any]], Any] = _mathcheck.handle,
        setup: Callable[[], Any] | None = _mathcheck.prepare,
    ) -> None:
        super().__init__(
            [handle],
            num_workers,
            "math checker",
            setup=setup,
            hint="Is math-verify installed for this Python? (pip install math-verify)",
        )

    def run(
        self, requests: list[list[Any]], timeout: float | None, keys: list[int] | None = None
    ) -> list[Any]:
        """One reply per request, in order; a :class:`Failed` for a request not answered within
        ``timeout`` seconds (None: no limit), whose process died on it twice, or that raised.

        ``keys`` (one per request) send requests with equal keys to the same process where the
        load allows. Raises :class:`~grpo_lightning.isolation.pool.WorkerStartError` when a process
        cannot start.
        """
        if not requests:
            return []
        jobs = _Jobs(requests, keys or list(range(len(requests))), self.num_workers)
        self.serve(jobs, timeout)
        return jobs.replies


@dataclass
class _Jobs:
    """One :meth:`CheckerPool.run` as the pool's :class:`~grpo_lightning.isolation.pool.Jobs`: one
    queue per process slot (by key), and stealing when one runs dry.

    A thief takes from the back of the longest queue, so the owner keeps the requests it reaches
    first and groups stay together as long as the load allows.
    """

    requests: list[list[Any]]
    keys: list[int]
    slots: int
    calls: list[tuple[int, tuple[Any, ...], dict[str, Any]]] = field(init=False)
    replies: list[Any] = field(init=False)
    queues: list[collections.deque[int]] = field(init=False)
    deaths: collections.Counter[int] = field(default_factory=collections.Counter)
    stopped: bool = False  # every request is answered once the queues are empty

    def __post_init__(self) -> None:
        self.calls = [(0, (request,), {}) for request in self.requests]
        self.replies = [None] * len(self.requests)
        self.queues = [collections.deque() for _ in range(self.slots)]
        for job, key in enumerate(self.keys):
            self.queues[key % self.slots].append(job)

    def waiting(self) -> bool:
        return any(self.queues)

    def take(self, slot: int) -> int | None:
        if self.queues[slot]:
            return self.queues[slot].popleft()
        longest = max(self.queues, key=len)
        return longest.pop() if longest else None

    def put_back(self, job: int) -> None:
        self.queues[self.keys[job] % self.slots].appendleft(job)

    def settle(self, job: int, outcome: Any) -> None:
        if isinstance(outcome, TimedOut):
            self.replies[job] = Failed(
                f"it took longer than the {outcome.seconds} s time limit (its checker process was killed "
                "and replaced)"
            )
        elif isinstance(outcome, Crashed):
            self.deaths[job] += 1
            if self.deaths[job] >= 2:
                self.replies[job] = Failed(
                    f"its checker process died on it twice (exit code {outcome.exit_code})"
                )
            else:
                self.put_back(job)
        elif isinstance(outcome, Raised):
            self.replies[job] = Failed(f"the checker raised {outcome.error}")
        else:
            self.replies[job] = outcome


_pools: dict[tuple[int, Any, Any, int], CheckerPool] = {}
_pools_lock = threading.Lock()


def shared_pool(
    num_workers: int,
    handle: Callable[[list[Any]], Any] = _mathcheck.handle,
    setup: Callable[[], Any] | None = _mathcheck.prepare,
) -> CheckerPool:
    """This process's pool of ``num_workers`` checker processes (created on first use)."""
    key = (os.getpid(), handle, setup, num_workers)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = CheckerPool(num_workers, handle, setup)
        return pool


def _forget_after_fork() -> None:
    """In a forked child: the parent's pools and lock are not this process's."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
