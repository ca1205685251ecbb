"""The child side of :mod:`grpo_lightning.isolation`: load the functions, then answer calls until told to stop.

Imported in the child only after its ``sys.path`` is the parent's; imports nothing but the standard
library, so a child holds only what its functions import (no torch for the math checker).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any


def serve(conn: Connection) -> None:
    """Unpickle ``(setup, functions)``, run ``setup()``, say ``"ready"``; then answer each
    ``(task, k, args, kwargs)`` with ``(task, True, functions[k](*args, **kwargs))`` or
    ``(task, False, "ValueError: ...")``. ``None`` or a closed connection stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle
    try:
        # Unpickling imports the functions' modules: done here, so that a failure is reported, not just printed.
        setup: Callable[[], Any] | None
        functions: Sequence[Callable[..., Any]]
        setup, functions = pickle.loads(conn.recv_bytes())
        if setup is not None:
            setup()
    except BaseException as err:
        conn.send(("error", load_error(err)))
        return
    conn.send("ready")  # time limits count from the first call, not from the process start
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent ended without closing the pool: so does the child
            return
        if message is None:
            return
        task, k, args, kwargs = message
        try:
            conn.send((task, True, functions[k](*args, **kwargs)))
        except Exception as err:  # the parent names the call that raised
            conn.send((task, False, f"{type(err).__name__}: {err}"))


def load_error(err: BaseException) -> str:
    """What a child says when it cannot import its functions: the error, and where it looked."""
    text = "".join(traceback.format_exception_only(type(err), err)).strip()
    if isinstance(err, ImportError):
        cwd = os.getcwd()
        on_path = any(os.path.abspath(p or ".") == cwd for p in sys.path)
        text += (
            f"\nThe process imports the functions' modules by name with the training process's sys.path "
            f"(the current folder {cwd} is {'' if on_path else 'not '}on it): run from the folder that holds "
            "the module, or add that folder to PYTHONPATH."
        )
    return text
