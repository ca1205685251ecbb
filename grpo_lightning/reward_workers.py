"""Reward functions in worker processes, with a time limit on every call.

A reward that hangs (a pathological expression for a symbolic checker, a stuck network call) or
kills its process (a segfault in a native parser) must not stall or end a training run. With
``reward_workers > 0`` each completion is scored by one call ``f(prompts=[p], completions=[c],
**row)`` in one of that many worker processes. A call that runs past ``timeout`` seconds has its
worker killed and replaced; a worker that dies is replaced; either way the completion is reported
by reward name and sample. Worker processes run the reward on their main thread, so signal-based
time limits inside a reward work there.

Workers start with the ``spawn`` method (safe with CUDA and threads): the reward functions must be
picklable, i.e. defined at module level (registered rewards and import paths are), and a script
that trains must keep its entry point under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import pickle
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

#: Seconds a worker process may take to start and import the reward functions.
STARTUP_S = 300.0


@dataclass(frozen=True)
class CallFailure:
    """Why a call gave no result: ``"timed out after 5s"``, ``"crashed its worker (exit code -11)"``,
    ``"raised ValueError: ..."``."""

    reason: str


def _serve(conn: Connection, funcs: Sequence[Callable[..., Any]]) -> None:
    """A worker's loop: receive ``(task, k, kwargs)``, answer ``(task, ok, value)``; ``None`` stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is for the training process to handle
    if sys.platform.startswith("linux"):  # die with the training process, even in the middle of a hung call
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    conn.send("ready")  # time limits start counting from here, not from the process start
    while True:
        message = conn.recv()
        if message is None:
            return
        task, k, kwargs = message
        try:
            values = funcs[k](**kwargs)
            values = values.tolist() if hasattr(values, "tolist") else list(values)
            conn.send((task, True, values))
        except Exception as err:  # reported with the sample by the parent
            conn.send((task, False, f"raised {type(err).__name__}: {err}"))


class _Worker:
    def __init__(self, ctx: Any, funcs: Sequence[Callable[..., Any]]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, funcs), daemon=True)
        self.process.start()
        child.close()
        self.task: int | None = None
        self.started = 0.0

    def wait_ready(self) -> None:
        """Block until the process has imported the reward functions (it says "ready")."""
        try:
            if self.conn.poll(STARTUP_S) and self.conn.recv() == "ready":
                return
        except (EOFError, OSError):
            pass
        self.stop(kill=True)
        raise RuntimeError(
            f"A reward worker process did not start (exit code {self.process.exitcode}); its error is printed "
            "above. The reward functions must be importable in a fresh process."
        )

    def stop(self, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
                self.process.join(timeout=2)
            except (OSError, BrokenPipeError):
                pass
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class RewardWorkerPool:
    """``num_workers`` processes that call ``funcs`` with a per-call time limit.

    Args:
        funcs: the reward functions (picklable); tasks name them by index.
        num_workers: processes to start (on first use).
        timeout: seconds one call may take (None: no limit).
    """

    def __init__(self, funcs: Sequence[Callable[..., Any]], num_workers: int, timeout: float | None) -> None:
        self._workers: list[_Worker] = []
        if num_workers < 1:
            raise ValueError(f"reward_workers={num_workers}: a worker pool needs at least 1 process.")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"reward_timeout={timeout} must be > 0 seconds, or None for no limit.")
        for fn in funcs:
            try:
                pickle.dumps(fn)
            except Exception as err:
                raise ValueError(
                    f"The reward {getattr(fn, '__name__', fn)!r} cannot be sent to a worker process ({err}). Define "
                    "it at module level (or register it / give its import path), or set reward_workers=0."
                ) from err
        self.funcs = list(funcs)
        self.num_workers = num_workers
        self.timeout = timeout
        self._ctx = mp.get_context("spawn")

    def _ensure_started(self) -> None:
        started = [_Worker(self._ctx, self.funcs) for _ in range(self.num_workers - len(self._workers))]
        self._workers.extend(started)
        for worker in started:  # they import in parallel; wait for each
            worker.wait_ready()

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def __del__(self) -> None:
        self.close()

    def map(self, tasks: Sequence[tuple[int, dict[str, Any]]]) -> list[Any]:
        """Run ``funcs[k](**kwargs)`` for every ``(k, kwargs)``; one result per task, in order: the
        returned list of values, or a :class:`CallFailure`."""
        self._ensure_started()
        results: list[Any] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        while pending or any(w.task is not None for w in self._workers):
            for worker in self._workers:
                if worker.task is None and pending:
                    task = pending.popleft()
                    worker.task, worker.started = task, time.monotonic()
                    worker.conn.send((task, *tasks[task]))
            busy = [w for w in self._workers if w.task is not None]
            wait([w.conn for w in busy], timeout=self._next_deadline(busy))
            for i, worker in enumerate(self._workers):
                if worker.task is not None:
                    self._collect(i, worker, results)
        return results

    def _next_deadline(self, busy: list[_Worker]) -> float | None:
        if self.timeout is None:
            return None
        now = time.monotonic()
        return max(0.0, min(w.started + self.timeout - now for w in busy)) + 0.01

    def _collect(self, i: int, worker: _Worker, results: list[Any]) -> None:
        """Take ``worker``'s answer if there is one; replace it when it died or ran out of time."""
        task = worker.task
        assert task is not None
        gone = False
        try:
            if worker.conn.poll():
                got, ok, value = worker.conn.recv()
                results[got] = value if ok else CallFailure(value)
                worker.task = None
                return
        except (EOFError, OSError):
            gone = True  # the pipe closed: the process died
        if gone or not worker.process.is_alive():
            worker.process.join(timeout=5)
            results[task] = CallFailure(f"crashed its worker process (exit code {worker.process.exitcode})")
        elif self.timeout is not None and time.monotonic() - worker.started > self.timeout:
            results[task] = CallFailure(f"timed out after {self.timeout:g}s")
        else:
            return  # still working, within its time
        worker.stop(kill=True)
        self._workers[i] = _Worker(self._ctx, self.funcs)
        self._workers[i].wait_ready()


def _row(columns: Mapping[str, Any], i: int, n: int) -> dict[str, Any]:
    """Completion ``i``'s share of the per-completion columns (lists of length ``n``); others as they are."""
    return {k: [v[i]] if isinstance(v, (list, tuple)) and len(v) == n else v for k, v in columns.items()}


def score_in_workers(
    pool: RewardWorkerPool,
    names: Sequence[str],
    prompts: Sequence[str],
    completions: Sequence[str],
    columns: Mapping[str, Any],
) -> tuple[list[list[Any]], list[tuple[int, int, CallFailure]]]:
    """Score every completion with every function, one call each, in ``pool``.

    Returns one list of N values per function (None where a call failed) and the failures as
    ``(function index, completion index, failure)``. Tensor columns are sent as lists.
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
    results = pool.map(tasks)
    values: list[list[Any]] = [[None] * n for _ in names]
    failures: list[tuple[int, int, CallFailure]] = []
    for (k, _), result, i in zip(tasks, results, [i for _ in names for i in range(n)], strict=True):
        if isinstance(result, CallFailure):
            failures.append((k, i, result))
        elif len(result) != 1:
            failures.append((k, i, CallFailure(f"returned {len(result)} values for 1 completion")))
        else:
            values[k][i] = result[0]
    return values, failures
