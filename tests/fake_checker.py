"""A checker without math-verify, called in checker processes by name, so each behaviour can be provoked."""

from __future__ import annotations

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


def import_missing():
    """A setup that fails as a checker without its library does."""
    import no_such_module_here  # noqa: F401


def exit_at_start():
    """A setup that says why on its error output, then ends the process."""
    print("the native library failed to load", file=sys.stderr, flush=True)
    os._exit(1)


def hang_at_start():
    time.sleep(60)
