"""The OpenMP wait policy, set before torch loads: idle threads sleep instead of spinning.

After every parallel region (a matrix product, a large elementwise op) the OpenMP runtime's worker
threads spin, waiting for the next one (libgomp, torch's runtime on Linux: ``GOMP_SPINCOUNT``, 300,000
turns by default). When other processes hold the cores, the thread a spinner waits for is often
descheduled, so the spinner burns the time slice that thread needs (measurements in
``benchmarks/results/threads-cpu-2core.txt``). ``OMP_WAIT_POLICY=PASSIVE`` lets idle threads sleep at
once. The runtime reads it once, when it loads, that is when torch is imported: so this module does
not import torch, and the ``grpo-lightning`` command calls :func:`prepare_openmp` before anything
imports it. A user's own ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` is kept.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

#: Environment variables that set the OpenMP wait policy (standard, GNU and Intel runtimes).
WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
PASSIVE = "PASSIVE"


def prepare_openmp(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (default: this process's) unless one of
    :data:`WAIT_POLICY_VARIABLES` is set there, or torch is already imported (the runtime has read
    its settings: it could not take effect). Returns whether it set it. Child processes inherit it."""
    env = os.environ if environ is None else environ
    if "torch" in sys.modules or any(env.get(name) for name in WAIT_POLICY_VARIABLES):
        return False
    env["OMP_WAIT_POLICY"] = PASSIVE
    return True


def wait_policy_note(environ: Mapping[str, str]) -> str:
    """What idle OpenMP threads do in a process with this environment, in words, for the log."""
    given = [f"{name}={environ[name]}" for name in WAIT_POLICY_VARIABLES if environ.get(name)]
    if given == [f"OMP_WAIT_POLICY={PASSIVE}"]:
        return f"idle threads sleep (OMP_WAIT_POLICY={PASSIVE})"
    if given:
        return "idle threads wait as the environment sets (" + ", ".join(given) + ")"
    return (
        "idle threads spin before sleeping (OpenMP's default: torch was loaded before grpo-lightning could "
        f"set OMP_WAIT_POLICY={PASSIVE}; on a shared CPU set it in the environment, or use the "
        "grpo-lightning command)"
    )
