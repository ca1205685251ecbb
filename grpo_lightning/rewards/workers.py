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

Each worker is a fresh interpreter (safe with CUDA and threads) that imports the rewards' modules
with the training process's ``sys.path``, and nothing else: the reward functions must be picklable,
i.e. defined at module level (registered rewards and import paths are). One defined in the training
script makes the workers import that script, as ``multiprocessing``'s spawn does, so the script
must keep its entry point under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing as mp
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import traceback
import weakref
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing import spawn
from multiprocessing.connection import Connection, wait
from typing import Any

#: Seconds a worker process may take to start and import the reward functions.
STARTUP_S = 300.0
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


class RewardWorkerStartError(RuntimeError):
    """A worker process could not start or could not load the reward functions."""


def _serve(conn: Connection, payload: bytes) -> None:
    """A worker's loop: load the pickled functions, then receive ``(task, k, kwargs)`` and answer
    ``(task, ok, value)``; ``None`` stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is for the training process to handle
    if sys.platform.startswith("linux"):  # die with the training process, even in the middle of a hung call
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    try:
        # Unpickling imports the rewards' modules: done here, so that a failure is reported, not just printed.
        funcs: Sequence[Callable[..., Any]] = pickle.loads(payload)
    except BaseException as err:
        conn.send(("error", _load_error(err)))
        return
    conn.send("ready")  # time limits start counting from the first call, not from the process start
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the training process ended without closing the pool: so does the worker
            return
        if message is None:
            return
        task, k, kwargs = message
        try:
            values = funcs[k](**kwargs)
            values = values.tolist() if hasattr(values, "tolist") else list(values)
            conn.send((task, True, values))
        except Exception as err:  # reported with the sample by the parent
            conn.send((task, False, f"raised {type(err).__name__}: {err}"))


def _load_error(err: BaseException) -> str:
    """What a worker says when it cannot import the reward functions: the error, and where it looked."""
    text = "".join(traceback.format_exception_only(type(err), err)).strip()
    if isinstance(err, ImportError):
        cwd = os.getcwd()
        on_path = any(os.path.abspath(p or ".") == cwd for p in sys.path)
        text += (
            f"\nThe worker imports the rewards' modules by name with the training process's sys.path "
            f"(the current folder {cwd} is {'' if on_path else 'not '}on it). Give the reward as an import "
            "path ('my_module:my_reward') run from the folder that holds my_module.py, or add that folder "
            "to PYTHONPATH."
        )
    return text


# A worker is a fresh interpreter that imports only what the rewards need: multiprocessing's spawn
# would also import the training script again (torch, Lightning: seconds per worker and per
# restart). Where the rewards are defined in that script, it is imported as spawn does.
_BOOT = """
import sys
from multiprocessing import spawn
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
spawn.prepare(conn.recv())
from grpo_lightning.rewards.workers import _serve
_serve(conn, conn.recv_bytes())
"""
#: What a worker takes from the training process (see ``multiprocessing.spawn.get_preparation_data``).
_PREPARED = ("sys_path", "sys_argv", "dir", "orig_dir", "name")
_MAIN = ("init_main_from_name", "init_main_from_path")


class _Child:
    """A worker started with ``subprocess``, with the ``multiprocessing.Process`` methods used here."""

    def __init__(self, payload: bytes) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(theirs.fileno())], pass_fds=[theirs.fileno()]
            )
        self.conn = Connection(ours.detach())
        prepared = spawn.get_preparation_data("reward-worker")
        wanted = _PREPARED + (_MAIN if b"__main__" in payload else ())  # a reward defined in the script
        with contextlib.suppress(OSError):  # it died at once: reported as a failed start
            self.conn.send({k: v for k, v in prepared.items() if k in wanted})
            self.conn.send_bytes(payload)

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        self.popen.kill()

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)


class _Worker:
    """One worker process: starting (not ``ready``), idle, or on ``task`` since ``started``."""

    def __init__(self, payload: bytes) -> None:
        self.process: Any
        if os.name == "posix":
            self.process = _Child(payload)
            self.conn = self.process.conn
        else:  # no file descriptors to pass: multiprocessing's spawn
            self.conn, child = mp.get_context("spawn").Pipe()
            self.process = mp.get_context("spawn").Process(target=_serve, args=(child, payload), daemon=True)
            self.process.start()
            child.close()
        self.spawned = time.monotonic()
        self.ready = False
        self.task: int | None = None
        self.started = 0.0

    @property
    def waited_on(self) -> bool:
        """Starting or busy: an answer (or its end) is due."""
        return not self.ready or self.task is not None

    def take_ready(self) -> None:
        """Read the start-up message if it came; raise when the process cannot serve."""
        message: Any = None
        try:
            if self.conn.poll():
                message = self.conn.recv()
        except (EOFError, OSError):
            message = ("error", None)
        if message == "ready":
            self.ready = True
            return
        if message is None and self.process.is_alive():
            if time.monotonic() - self.spawned < STARTUP_S:
                return  # still importing
            why = f"did not start within {STARTUP_S:g}s"
        elif message is not None and message[1]:
            why = f"could not load the reward functions:\n{message[1]}"
        else:
            self.process.join(timeout=5)
            why = f"exited while starting (exit code {self.process.exitcode}); its error is printed above"
        self.stop(kill=True)
        raise RewardWorkerStartError(
            f"A reward worker process {why}\nThe reward functions must be importable in a fresh process "
            "(or set reward_workers=0 to score in the training process)."
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


@dataclass
class _Batch:
    """One :meth:`RewardWorkerPool.map`: the tasks still to send, the results, and per function the
    calls that failed hard (timed out, crashed their worker) and those that answered."""

    tasks: Sequence[tuple[int, dict[str, Any]]]
    fail_fast: bool
    results: list[Any] = field(init=False)
    pending: deque[int] = field(init=False)
    hard: Counter[int] = field(default_factory=Counter)
    answered: Counter[int] = field(default_factory=Counter)
    stopped: bool = False  # fail_fast and a call failed

    def __post_init__(self) -> None:
        self.results = [None] * len(self.tasks)
        self.pending = deque(range(len(self.tasks)))

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

    def next_task(self) -> int | None:
        """The next task to send; those of a function given up on fail here without a call."""
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

    def running(self, workers: Sequence[_Worker]) -> bool:
        """Calls are still to be made or answered."""
        return bool(self.pending) or any(w.task is not None for w in workers)


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
        self.funcs = list(funcs)
        self._payload = pickle.dumps(self.funcs)
        self.num_workers = num_workers
        self.timeout = timeout
        self.restarts = 0  # workers replaced after a call timed out or crashed them
        _live_pools.add(self)

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def __del__(self) -> None:
        if not sys.is_finalizing():  # at exit, _close_pools already did (the pipes' modules are gone now)
            self.close()

    def map(self, tasks: Sequence[tuple[int, dict[str, Any]]], fail_fast: bool = False) -> list[Any]:
        """Run ``funcs[k](**kwargs)`` for every ``(k, kwargs)``; one result per task, in order: the
        returned list of values, or a :class:`CallFailure`. With ``fail_fast`` the batch stops at the
        first failure: the tasks it did not finish are None (see the module docstring for the bounds).
        Raises :class:`RewardWorkerStartError` when a worker cannot start."""
        batch = _Batch(tasks, fail_fast)
        try:
            while len(self._workers) < self.num_workers:  # first use, or after a batch that stopped early
                self._workers.append(_Worker(self._payload))
            while not batch.stopped:
                self._dispatch(batch)
                if not batch.running(self._workers):
                    break
                wait([w.conn for w in self._workers if w.waited_on], timeout=self._wait_time())
                for i in range(len(self._workers)):
                    self._check(i, batch)
        finally:
            # Stopped early or interrupted: a call still running would answer into the next batch.
            for worker in [w for w in self._workers if w.task is not None]:
                worker.stop(kill=True)
                self._workers.remove(worker)
        return batch.results

    def _dispatch(self, batch: _Batch) -> None:
        for i, worker in enumerate(self._workers):
            if worker.ready and worker.task is None:
                task = batch.next_task()
                if task is None:
                    return
                worker.task, worker.started = task, time.monotonic()
                try:
                    worker.conn.send((task, *batch.tasks[task]))
                except OSError:  # it died while idle
                    self._lost(i, batch)

    def _wait_time(self) -> float | None:
        """Seconds until the nearest deadline (a call's time limit, a start-up's); None: there is none."""
        deadlines = [w.spawned + STARTUP_S for w in self._workers if not w.ready]
        if self.timeout is not None:
            deadlines += [w.started + self.timeout for w in self._workers if w.task is not None]
        return max(0.0, min(deadlines) - time.monotonic()) + 0.01 if deadlines else None

    def _check(self, i: int, batch: _Batch) -> None:
        """Take worker ``i``'s message if there is one; replace it when it died or ran out of time."""
        worker = self._workers[i]
        if not worker.ready:
            try:
                worker.take_ready()
            except RewardWorkerStartError:
                self._workers.pop(i)  # stopped already; the next batch starts another
                raise
            return
        if worker.task is None:
            return
        gone = False
        try:
            if worker.conn.poll():
                got, ok, value = worker.conn.recv()
                batch.record(got, value if ok else CallFailure(value))
                worker.task = None
                return
        except (EOFError, OSError):
            gone = True  # the pipe closed: the process died (or is dying)
        if gone or not worker.process.is_alive():
            self._lost(i, batch)
        elif self.timeout is not None and time.monotonic() - worker.started > self.timeout:
            batch.record(worker.task, CallFailure(f"timed out after {self.timeout:g}s"), hard=True)
            self._replace(i)

    def _lost(self, i: int, batch: _Batch) -> None:
        """Worker ``i`` died on its task: the task failed; a new worker starts in the background."""
        worker = self._workers[i]
        assert worker.task is not None
        worker.process.join(timeout=5)
        reason = f"crashed its worker process (exit code {worker.process.exitcode})"
        batch.record(worker.task, CallFailure(reason), hard=True)
        self._replace(i)

    def _replace(self, i: int) -> None:
        """Kill worker ``i`` and start another in its place; it takes calls once it is ready."""
        self._workers[i].stop(kill=True)
        self._workers[i] = _Worker(self._payload)
        self.restarts += 1


_live_pools: weakref.WeakSet[RewardWorkerPool] = weakref.WeakSet()


@atexit.register
def _close_pools() -> None:
    """Stop the workers of the pools nobody closed, while the interpreter can still talk to them."""
    for pool in list(_live_pools):
        pool.close()


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
