"""Persistent checker processes with a hard time limit per request.

A slow checker (math-verify on sympy) can take unbounded time on a degenerate answer, and inside one
process nothing stops it reliably: ``signal.alarm`` works only on the main thread and never
interrupts work inside C code. So requests go to child processes; a request that runs past its
limit gets its process killed (and replaced), and is answered with a :class:`Failed`.

The children are started with ``subprocess`` (not ``multiprocessing``): a spawned
``multiprocessing`` child re-imports the parent's ``__main__`` (a training script without a main
guard would run again) and daemonic processes such as DataLoader workers may not have
``multiprocessing`` children. Each child runs a script that imports only what it needs and speaks
one JSON line per request and reply (see ``_mathcheck.main``).

Pools are shared per process (:func:`shared_pool`): a forked child (a DataLoader worker) starts
its own and never touches its parent's.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Failed:
    """The answer to a request that got none: it ran past its time limit (its process was killed
    and replaced), its process died twice while on it (out of memory, a crash), or the script
    reported an error."""

    reason: str


#: Seconds a new checker process may take to import its libraries and say it is ready.
STARTUP_TIMEOUT = 300.0

# Run the script by path without putting its folder on sys.path (it would shadow ``math`` with
# rewards/math.py) and without the current folder (a user's ``json.py`` would shadow the stdlib).
# On Linux, first ask the kernel to kill the process when its parent dies (PR_SET_PDEATHSIG), even
# in the middle of a computation that never returns; then check the parent did not die before.
_BOOTSTRAP = """
import os, sys
del sys.path[0]
if sys.platform.startswith("linux"):
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
if os.getppid() != int(sys.argv[2]):
    os._exit(0)
import runpy
runpy.run_path(sys.argv[1], run_name="__main__")
"""


class CheckerStartError(RuntimeError):
    """A checker process could not start."""


@dataclass
class _Worker:
    """One child process and the request it is working on."""

    proc: subprocess.Popen[str]
    slot: int  # its place in the pool, kept by the process that replaces it
    ready: bool = False
    started: float = field(default_factory=time.monotonic)
    job: int | None = None
    deadline: float | None = None
    errors: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=30))
    relay: threading.Thread | None = None  # forwards its stderr (see CheckerPool._relay_errors)


class CheckerPool:
    """``num_workers`` child processes running ``script``; :meth:`run` answers requests in parallel.

    Args:
        script: path of a Python file whose ``__main__`` speaks the line protocol.
        num_workers: how many requests run at once.
    """

    def __init__(self, script: str, num_workers: int) -> None:
        self.script = script
        self.num_workers = num_workers
        self._replies: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self._workers: dict[int, _Worker] = {}  # by ident (process ids can be reused)
        self._idents = itertools.count()
        self._lock = threading.Lock()  # one run at a time; concurrent callers wait
        self.restarts = 0  # processes killed on a time limit or found dead

    def run(
        self, requests: list[list[Any]], timeout: float | None, keys: list[int] | None = None
    ) -> list[Any]:
        """One reply per request, in order; a :class:`Failed` for a request not answered within
        ``timeout`` seconds (None: no limit), whose process died on it twice, or that raised.

        ``keys`` (one per request) send requests with equal keys to the same process where the
        load allows (a process caches what it parsed: the gold answer of a group). Raises
        :class:`CheckerStartError` when a process cannot start.
        """
        if not requests:
            return []
        with self._lock:
            try:
                return self._run(requests, timeout, keys or list(range(len(requests))))
            except BaseException:
                # Interrupted (Ctrl-C, a failed start): a busy process would answer into the next run.
                for ident, worker in list(self._workers.items()):
                    if worker.job is not None:
                        self._kill(ident)
                raise

    def _run(self, requests: list[list[Any]], timeout: float | None, keys: list[int]) -> list[Any]:
        lines = [json.dumps(request) + "\n" for request in requests]
        replies: list[Any] = [None] * len(lines)
        todo = _Jobs(keys, self.num_workers)
        deaths = [0] * len(lines)
        for slot in set(range(self.num_workers)) - {w.slot for w in self._workers.values()}:
            self._start(slot)
        while todo or any(w.job is not None for w in self._workers.values()):
            for worker in list(self._workers.values()):
                if todo and worker.ready and worker.job is None:
                    self._send(worker, todo.take(worker.slot), lines, timeout)
            try:
                ident, line = self._replies.get(timeout=self._wait_time())
            except queue.Empty:
                continue
            finally:  # on every turn: a stream of replies from others must not delay a kill
                self._expire(replies, timeout)
            worker = self._workers.get(ident)
            if worker is None:
                continue  # a line from a process already killed
            if line is None:
                self._on_exit(ident, worker, replies, deaths, todo)
            elif not worker.ready:
                worker.ready = json.loads(line) == "ready"
            else:
                assert worker.job is not None
                status, value = json.loads(line)
                replies[worker.job] = value if status == "ok" else Failed(f"the checker raised {value}")
                worker.job = worker.deadline = None
        return replies

    def _start(self, slot: int) -> None:
        """Start one child in ``slot``; it takes requests once it has written its ready line."""
        proc = _spawn([sys.executable, "-c", _BOOTSTRAP, self.script, str(os.getpid())])
        ident = next(self._idents)
        worker = self._workers[ident] = _Worker(proc, slot)
        reader = threading.Thread(
            target=self._read, args=(proc, ident), daemon=True, name="grpo-checker-reader"
        )
        reader.start()
        worker.relay = threading.Thread(
            target=_relay_errors, args=(worker,), daemon=True, name="grpo-checker-stderr"
        )
        worker.relay.start()

    def _read(self, proc: subprocess.Popen[str], ident: int) -> None:
        """Forward each line of the child's stdout to the pool's queue; None at the end."""
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                self._replies.put((ident, line))
        except (OSError, ValueError):  # the pipe was closed under us by a kill
            pass
        self._replies.put((ident, None))

    def _send(self, worker: _Worker, job: int, lines: list[str], timeout: float | None) -> None:
        worker.job = job
        worker.deadline = None if timeout is None else time.monotonic() + timeout
        try:
            assert worker.proc.stdin is not None
            worker.proc.stdin.write(lines[job])
            worker.proc.stdin.flush()
        except OSError:  # it died since its last reply: its end-of-output line will follow
            pass

    def _wait_time(self) -> float | None:
        """Seconds until the nearest deadline (a request's, or a start-up's); None if there is none."""
        now = time.monotonic()
        deadlines = [w.deadline for w in self._workers.values() if w.deadline is not None]
        deadlines += [w.started + STARTUP_TIMEOUT for w in self._workers.values() if not w.ready]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _expire(self, replies: list[Any], timeout: float | None) -> None:
        """Kill the processes whose request or start-up is past its deadline; replace them."""
        now = time.monotonic()
        for ident, worker in list(self._workers.items()):
            if not worker.ready and now >= worker.started + STARTUP_TIMEOUT:
                self._kill(ident)
                raise CheckerStartError(
                    f"A checker process ({self.script}) did not start within {STARTUP_TIMEOUT:g} s."
                )
            if worker.deadline is not None and now >= worker.deadline:
                assert worker.job is not None
                replies[worker.job] = Failed(
                    f"it took longer than the {timeout} s time limit (its checker process was killed "
                    "and replaced)"
                )
                self._kill(ident)
                self._start(worker.slot)

    def _on_exit(
        self, ident: int, worker: _Worker, replies: list[Any], deaths: list[int], todo: _Jobs
    ) -> None:
        """A child's output ended without us killing it: retry its request once on a new one."""
        self._kill(ident)
        code = worker.proc.returncode
        if not worker.ready:
            if worker.relay is not None:
                worker.relay.join(timeout=5)  # its last words may still be in the pipe
            raise CheckerStartError(
                f"A checker process ({self.script}) exited with code {code} while starting. "
                f"Is math-verify installed for this Python ({sys.executable})? Its error output:\n"
                + "".join(worker.errors)
            )
        if worker.job is not None:
            deaths[worker.job] += 1
            if deaths[worker.job] >= 2:
                replies[worker.job] = Failed(f"its checker process died on it twice (exit code {code})")
            else:
                todo.put_back(worker.job)
        self._start(worker.slot)

    def _kill(self, ident: int) -> None:
        worker = self._workers.pop(ident)
        worker.proc.kill()
        worker.proc.wait()
        for stream in (worker.proc.stdin, worker.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.restarts += 1

    def close(self) -> None:
        """Stop every child process."""
        with self._lock:
            for ident in list(self._workers):
                self._kill(ident)


class _Jobs:
    """Requests waiting for a process: one queue per slot (by key), and stealing when one runs dry.

    A thief takes from the back of the longest queue, so the owner keeps the requests it reaches
    first and groups stay together as long as the load allows.
    """

    def __init__(self, keys: list[int], slots: int) -> None:
        self.queues: list[collections.deque[int]] = [collections.deque() for _ in range(slots)]
        self.keys = keys
        for job, key in enumerate(keys):
            self.queues[key % slots].append(job)

    def __bool__(self) -> bool:
        return any(self.queues)

    def take(self, slot: int) -> int:
        if self.queues[slot]:
            return self.queues[slot].popleft()
        return max(self.queues, key=len).pop()

    def put_back(self, job: int) -> None:
        self.queues[self.keys[job] % len(self.queues)].appendleft(job)


def _relay_errors(worker: _Worker) -> None:
    """Copy a child's error output to this process's ``sys.stderr`` (a notebook shows it there, not
    in the terminal that started the kernel), keeping the last lines for a start-up error."""
    stream = worker.proc.stderr
    assert stream is not None
    with contextlib.suppress(OSError, ValueError):
        for line in stream:
            worker.errors.append(line)
            sys.stderr.write(line)
    with contextlib.suppress(OSError):
        stream.close()


def _spawn(command: list[str]) -> subprocess.Popen[str]:
    """Start ``command`` from a thread that lives as long as the process.

    On Linux the children ask the kernel to kill them when their parent dies, and "parent" there
    means the thread that started them: a short-lived thread (a reward called from a thread pool)
    would take its children with it when it ends.
    """
    global _spawner
    if _spawner is None or _spawner[0] != os.getpid():
        requests: queue.Queue[tuple[list[str], queue.Queue[Any]]] = queue.Queue()
        threading.Thread(
            target=_serve_spawns, args=(requests,), daemon=True, name="grpo-checker-spawner"
        ).start()
        _spawner = (os.getpid(), requests)
    answer: queue.Queue[Any] = queue.Queue(maxsize=1)
    _spawner[1].put((command, answer))
    result = answer.get()
    if isinstance(result, BaseException):
        raise CheckerStartError(f"Could not start a checker process: {result}") from result
    return result


def _serve_spawns(requests: queue.Queue[tuple[list[str], queue.Queue[Any]]]) -> None:
    while True:
        command, answer = requests.get()
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",  # the JSON lines are ASCII (JSON escapes the rest); stderr may not be
                errors="replace",
                bufsize=1,
            )
        except BaseException as err:
            answer.put(err)
        else:
            answer.put(proc)


_spawner: tuple[int, queue.Queue[Any]] | None = None
_pools: dict[tuple[int, str, int], CheckerPool] = {}
_pools_lock = threading.Lock()


def shared_pool(script: str, num_workers: int) -> CheckerPool:
    """This process's pool for ``script`` with ``num_workers`` processes (created on first use)."""
    key = (os.getpid(), script, num_workers)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = CheckerPool(script, num_workers)
        return pool


def _forget_after_fork() -> None:
    """In a forked child: the parent's pools, spawner thread and locks are not this process's."""
    global _spawner, _pools_lock
    _spawner = None
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def _close_pools() -> None:
    for (pid, _, _), pool in list(_pools.items()):
        if pid == os.getpid():
            pool.close()
