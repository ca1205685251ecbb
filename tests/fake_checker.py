"""A checker without math-verify, called in checker processes by name, so each behaviour can be provoked."""

from __future__ import annotations

import importlib
import os
import sys
import time


def handle(request):
    """One request: ``["echo", x]``, ``["pid"]``, ``["sleep", s]``, ``["die"]``, ``["die_once", marker]``,
    ``["loaded", module]`` (whether this process has imported it)."""
    kind, *args = request
    if kind == "echo":
        return args[0]
    if kind == "pid":
        return os.getpid()
    if kind == "sleep":
        time.sleep(args[0])
        return "slept"
    if kind == "die":
        os._exit(3)
    if kind == "die_once":  # dies the first time it sees this marker file
        if not os.path.exists(args[0]):
            open(args[0], "w").close()
            os._exit(3)
        return "second try"
    if kind == "loaded":
        return args[0] in sys.modules
    raise ValueError("unknown request")


#: A module no environment has: the library a checker's setup fails to find.
MISSING_LIBRARY = "no_such_module_here"


def import_missing():
    """A setup that fails as a checker without its library does (``import`` of a missing module)."""
    importlib.import_module(MISSING_LIBRARY)


def exit_at_start():
    """A setup that says why on its error output, then ends the process."""
    print("the native library failed to load", file=sys.stderr, flush=True)
    os._exit(1)


def hang_at_start():
    time.sleep(60)
