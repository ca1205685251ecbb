"""One child process of a :class:`~grpo_lightning.isolation.pool.ProcessPool`: started lean, with its
error output relayed, and sure to end with its parent.

A child is a fresh interpreter started with ``subprocess`` (never ``fork``: the parent has torch's
threads and maybe CUDA). It takes the parent's ``sys.path`` (so a module found from the current
folder is found there too) and imports only what its functions need: ``multiprocessing``'s spawn
would also import the training script again (torch, Lightning: seconds per start and restart) and
may not be used from daemonic processes such as DataLoader workers. Only where a function is defined
in the script itself (pickled as ``__main__``) is the script imported, as spawn does.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from multiprocessing import spawn
from multiprocessing.connection import Connection
from typing import Any

# Run without the current folder first on sys.path (a user's json.py would shadow the standard
# library) until the parent's sys.path is set. On Linux, first ask the kernel to kill the process
# when its parent dies (PR_SET_PDEATHSIG), even in the middle of a call that never returns; then
# check the parent did not die before.
_BOOT = """
import os, sys
del sys.path[0]
if sys.platform.startswith("linux"):
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
if os.getppid() != int(sys.argv[2]):
    os._exit(0)
from multiprocessing import spawn
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
spawn.prepare(conn.recv())
from grpo_lightning.isolation.child import serve
serve(conn)
"""
#: What a child takes from the parent (see ``multiprocessing.spawn.get_preparation_data``).
_PREPARED = ("sys_path", "sys_argv", "dir", "orig_dir", "name")
_MAIN = ("init_main_from_name", "init_main_from_path")


class Child:
    """A child process: starting (not ``ready``), idle, or on ``task`` since ``started``."""

    def __init__(self, payload: bytes) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self.popen = _spawn(
                [sys.executable, "-c", _BOOT, str(theirs.fileno()), str(os.getpid())], theirs.fileno()
            )
        self.conn = Connection(ours.detach())
        self.errors: collections.deque[str] = collections.deque(maxlen=30)  # its last lines of error output
        self.relay = threading.Thread(target=self._relay_errors, daemon=True, name="grpo-isolation-stderr")
        self.relay.start()
        prepared = spawn.get_preparation_data("grpo-isolation")
        wanted = _PREPARED + (_MAIN if b"__main__" in payload else ())  # a function defined in the script
        with contextlib.suppress(OSError):  # it died at once: reported as a failed start
            self.conn.send({k: v for k, v in prepared.items() if k in wanted})
            self.conn.send_bytes(payload)
        self.spawned = time.monotonic()
        self.ready = False
        self.task: int | None = None
        self.started = 0.0

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def waited_on(self) -> bool:
        """Starting or busy: a message (or its end) is due."""
        return not self.ready or self.task is not None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def take_ready(self) -> str | None:
        """Read the start-up message if it came: None while starting or once ready, else why it cannot serve."""
        message: Any = None
        try:
            if self.conn.poll():
                message = self.conn.recv()
        except (EOFError, OSError):
            message = ("error", None)
        if message == "ready":
            self.ready = True
            return None
        if message is None and self.alive():
            return None
        if message is not None and message[1]:
            return f"could not load its functions:\n{message[1]}"
        # Its pipe closed but it still runs: the pool's stop() kills it.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        self.relay.join(timeout=5)  # its last words may still be in the pipe
        return f"exited while starting (exit code {self.popen.returncode}). Its error output:\n" + "".join(
            self.errors
        )

    def stop(self, kill: bool = False) -> None:
        """End the process (asked to stop, or killed) and reap it: no zombie is left."""
        if not kill and self.alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=2)
        if self.alive():
            self.popen.kill()
        self.popen.wait()
        self.conn.close()

    def _relay_errors(self) -> None:
        """Copy the child's error output to this process's ``sys.stderr`` (a notebook shows it there, not
        in the terminal that started the kernel), keeping the last lines for a start-up error."""
        stream = self.popen.stderr
        assert stream is not None
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                self.errors.append(line)
                sys.stderr.write(line)
        with contextlib.suppress(OSError):
            stream.close()


def _spawn(command: list[str], fd: int) -> subprocess.Popen[str]:
    """Start ``command`` (passing it ``fd``) from a thread that lives as long as the process.

    On Linux the children ask the kernel to kill them when their parent dies, and "parent" there
    means the thread that started them: a short-lived thread (a reward called from a thread pool)
    would take its children with it when it ends.
    """
    global _spawner
    if _spawner is None or _spawner[0] != os.getpid():
        requests: queue.Queue[tuple[list[str], int, queue.Queue[Any]]] = queue.Queue()
        threading.Thread(
            target=_serve_spawns, args=(requests,), daemon=True, name="grpo-isolation-spawner"
        ).start()
        _spawner = (os.getpid(), requests)
    answer: queue.Queue[Any] = queue.Queue(maxsize=1)
    _spawner[1].put((command, fd, answer))
    result = answer.get()
    if isinstance(result, BaseException):
        raise result
    return result


def _serve_spawns(requests: queue.Queue[tuple[list[str], int, queue.Queue[Any]]]) -> None:
    while True:
        command, fd, answer = requests.get()
        try:
            proc = subprocess.Popen(
                command, pass_fds=[fd], stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace"
            )
        except BaseException as err:
            answer.put(err)
        else:
            answer.put(proc)


_spawner: tuple[int, queue.Queue[Any]] | None = None


def _forget_after_fork() -> None:
    """In a forked child (a DataLoader worker): the parent's spawner thread is not this process's."""
    global _spawner
    _spawner = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
