"""``python -m grpo_lightning fit --config ...``; :func:`main` is also the entry point the
``grpo-lightning`` command should use.

Importing this module does not load torch, so :func:`~grpo_lightning.training.openmp.prepare_openmp` can set
the OpenMP wait policy before the runtime reads it (once, when torch loads it).
"""

from __future__ import annotations

import os
import sys

from grpo_lightning.training.openmp import prepare_openmp

# Set to 1 to see the full traceback of an error from one of this package's checks.
TRACEBACK_ENV = "GRPO_LIGHTNING_TRACEBACK"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def raised_by_this_package(error: BaseException) -> bool:
    """Whether ``error`` was raised by this package's own code (one of its checks), not by a library
    it called (whose traceback is what a bug report needs)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep)


def main() -> None:
    """Set the OpenMP wait policy, then run the command line (returns None: exit status 0).

    A ValueError or RuntimeError from one of this package's checks (a setting, a file, a folder) is
    printed as one paragraph, exit status 1; ``GRPO_LIGHTNING_TRACEBACK=1`` shows the traceback instead.
    """
    prepare_openmp()
    from grpo_lightning.cli.app import console_entry  # loads torch: imported here, after prepare_openmp

    try:
        console_entry()
    except (ValueError, RuntimeError) as error:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0") or not raised_by_this_package(error):
            raise
        print(
            f"error: {error}\n(This is the cause; for the full traceback, run again with {TRACEBACK_ENV}=1.)",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
