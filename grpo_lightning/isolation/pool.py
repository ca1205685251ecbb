"""A pool of child processes that call functions with a hard time limit per call.

Work that can hang (sympy on a degenerate answer, a stuck network call) or kill its process (a
segfault in a native parser) must neither stall nor end a training run, and inside one process
nothing stops it reliably: ``signal.alarm`` works only on the main thread and never interrupts C
code. So calls run in child processes (:mod:`grpo_lightning.isolation.process`): a call past its
time limit has its child killed and replaced, a child that dies is reported for its call and
replaced, and a replacement starts in the background while the others go on (its time limit
counts from its first call, not from its start). Which call goes next, and what a failure means,
is the caller's (:class:`Jobs`): a reward batch gives up on a reward that keeps hanging, the math
checker retries a crash once and keeps a gold answer's checks on one process.

Children end with the pool (:meth:`ProcessPool.close`, at exit, or with the parent process on
Linux) and are always reaped. Functions are pickled by reference: module-level functions and
instances of module-level classes. POSIX only (a child gets its pipe as an inherited file descriptor).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Protocol

from grpo_lightning.isolation.process import Child

#: Seconds a child may take to start and import its functions.
STARTUP_S = 300.0


@dataclass(frozen=True)
class Failure:
    """Why a call gave no value (one of the subclasses)."""


@dataclass(frozen=True)
class Raised(Failure):
    """The function raised: ``error`` is ``"ValueError: ..."``."""

    error: str


@dataclass(frozen=True)
class TimedOut(Failure):
    """The call ran past ``seconds``: its child was killed and replaced."""

    seconds: float


@dataclass(frozen=True)
class Crashed(Failure):
    """The child died during the call (``exit_code`` negative: killed by that signal); it was replaced."""

    exit_code: int | None


class WorkerStartError(RuntimeError):
    """A child process could not start or could not load its functions."""


class Jobs(Protocol):
    """The calls of one :meth:`ProcessPool.serve` and what to do with their outcomes."""

    calls: Sequence[tuple[int, tuple[Any, ...], dict[str, Any]]]  # (function index, args, kwargs)
    stopped: bool  # no more calls to send or wait for: busy children are killed

    def take(self, slot: int) -> int | None:
        """The next call for the idle child in ``slot``; None: none to send now."""

    def waiting(self) -> bool:
        """Calls are still to be sent."""

    def settle(self, task: int, outcome: Any) -> None:
        """Call ``task`` answered ``outcome`` (its value, or a :class:`Failure`)."""


class ProcessPool:
    """``num_workers`` child processes that call ``functions`` (started on first use).

    Args:
        functions: picklable callables; calls name them by index.
        num_workers: children working at once.
        name: what the children are called in errors (``"reward worker"``).
        setup: called once in each child before it takes calls (imports, logging); picklable.
        hint: the last line of a start-up error: what to do.
    """

    _lock: threading.Lock | None = None  # None until __init__ succeeds: nothing to close

    def __init__(
        self,
        functions: Sequence[Callable[..., Any]],
        num_workers: int,
        name: str,
        setup: Callable[[], Any] | None = None,
        hint: str = "",
    ) -> None:
        if os.name != "posix":
            raise RuntimeError(f"{name} processes need a POSIX system (Linux, macOS); this is {os.name!r}.")
        if num_workers < 1:
            raise ValueError(f"{name} processes: num_workers={num_workers}, at least 1 is needed.")
        self._payload = pickle.dumps((setup, list(functions)))
        self._children: list[Child | None] = [None] * num_workers
        self.num_workers = num_workers
        self.name = name
        self.hint = hint
        self.restarts = 0  # children replaced after a call timed out or crashed them
        self._pid = os.getpid()  # a forked copy of the pool (a DataLoader worker) must not touch its children
        self._lock = threading.Lock()  # one serve at a time; concurrent callers wait
        _live_pools.add(self)

    @property
    def pids(self) -> list[int]:
        """The process ids of the running children."""
        return [c.pid for c in self._children if c is not None]

    def close(self) -> None:
        """Stop every child and reap it."""
        if self._lock is None or os.getpid() != self._pid:
            return
        with self._lock:
            for slot, child in enumerate(self._children):
                if child is not None:
                    child.stop()
                    self._children[slot] = None

    def __del__(self) -> None:
        if not sys.is_finalizing():  # at exit, _close_pools already did (the pipes' modules are gone now)
            self.close()

    def serve(self, jobs: Jobs, timeout: float | None) -> None:
        """Run ``jobs``' calls, each limited to ``timeout`` seconds (None: no limit), until none is
        left or ``jobs.stopped``. Raises :class:`WorkerStartError` when a child cannot start."""
        assert self._lock is not None
        with self._lock:
            try:
                # Start the missing children: on first use, or after a serve that stopped early.
                for slot, child in enumerate(self._children):
                    if child is None:
                        self._children[slot] = Child(self._payload)
                while not jobs.stopped:
                    self._dispatch(jobs)
                    busy = [c for c in self._children if c is not None and c.task is not None]
                    if jobs.stopped or not (busy or jobs.waiting()):
                        break
                    wait(
                        [c.conn for c in self._children if c is not None and c.waited_on],
                        self._wait_time(timeout),
                    )
                    for slot in range(self.num_workers):
                        self._check(slot, jobs, timeout)
            finally:
                # Stopped early or interrupted: a call still running would answer into the next serve.
                for slot, child in enumerate(self._children):
                    if child is not None and child.task is not None:
                        child.stop(kill=True)
                        self._children[slot] = None

    def _dispatch(self, jobs: Jobs) -> None:
        for slot, child in enumerate(self._children):
            if child is not None and child.ready and child.task is None and not jobs.stopped:
                task = jobs.take(slot)
                if task is None:
                    return
                child.task, child.started = task, time.monotonic()
                # It died while idle: _check finds it dead and reports its call as a crash.
                with contextlib.suppress(OSError):
                    child.conn.send((task, *jobs.calls[task]))

    def _wait_time(self, timeout: float | None) -> float | None:
        """Seconds until the nearest deadline (a call's time limit, a start-up's); None: there is none."""
        children = [c for c in self._children if c is not None]
        deadlines = [c.spawned + STARTUP_S for c in children if not c.ready]
        if timeout is not None:
            deadlines += [c.started + timeout for c in children if c.task is not None]
        return max(0.0, min(deadlines) - time.monotonic()) + 0.01 if deadlines else None

    def _check(self, slot: int, jobs: Jobs, timeout: float | None) -> None:
        """Take child ``slot``'s message if there is one; replace it when it died or ran out of time."""
        child = self._children[slot]
        if child is None:
            return
        if not child.ready:
            why = child.take_ready()
            if why is None and not child.ready and time.monotonic() - child.spawned > STARTUP_S:
                why = f"did not start within {STARTUP_S:g} s"
            if why is not None:
                child.stop(kill=True)
                self._children[slot] = None  # the next serve starts another
                raise WorkerStartError(f"A {self.name} process {why}\n{self.hint}".rstrip())
            return
        task = child.task
        if task is None:
            return
        gone = False
        try:
            if child.conn.poll():
                got, ok, value = child.conn.recv()
                child.task = None
                jobs.settle(got, value if ok else Raised(value))
                return
        except (EOFError, OSError):
            gone = True  # the pipe closed: the process died (or is dying)
        if gone or not child.alive():
            child.stop(kill=True)
            self._replace(slot)
            jobs.settle(task, Crashed(child.popen.returncode))
        elif timeout is not None and time.monotonic() - child.started > timeout:
            child.stop(kill=True)
            self._replace(slot)
            jobs.settle(task, TimedOut(timeout))

    def _replace(self, slot: int) -> None:
        """Start a child in ``slot`` (the old one is stopped); it takes calls once it is ready."""
        self._children[slot] = Child(self._payload)
        self.restarts += 1


_live_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


@atexit.register
def _close_pools() -> None:
    """Stop the children of the pools nobody closed, while the interpreter can still talk to them."""
    for pool in list(_live_pools):
        lock = pool._lock
        if lock is not None and lock.acquire(blocking=False):  # one busy in another thread: they die with us
            lock.release()
            pool.close()
