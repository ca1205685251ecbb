"""What /proc says about a process (Linux): whether it has ended, and whether it is a child not yet reaped."""

from __future__ import annotations

import os
import time


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first, then the parent's id)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()
    except FileNotFoundError:
        return None


def gone(pid: int, seconds: float = 10.0) -> bool:
    """``pid`` has ended within ``seconds`` (a zombie waiting for its parent or init counts as ended)."""
    deadline = time.monotonic() + seconds
    while True:
        fields = _stat(pid)
        if fields is None or fields[0] == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def ours(pid: int) -> bool:
    """``pid`` is a child of this process, running or a zombie (ended but not reaped)."""
    fields = _stat(pid)
    return fields is not None and int(fields[1]) == os.getpid()
