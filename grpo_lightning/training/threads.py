"""The intra-op thread count: how many threads torch's CPU operations use, chosen once per process.

torch starts one thread per physical core of the machine, even where the process may use fewer
(``taskset``, a container's CPU quota) or shares them with the other ranks of a multi-process run:
threads beyond the cores only wait for each other, and on a busy machine each wait can cost a time
slice. :func:`apply_thread_policy` uses the cores this process may run on, divided among the node's
training processes, never more than torch's default, and logs the count once with the OpenMP wait
policy (:mod:`grpo_lightning.training.openmp`). A thread count the user chose is kept: ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` (checked: a positive integer) or a ``torch.set_num_threads`` call made before
training (seen as a count other than torch's default).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from grpo_lightning.training.openmp import wait_policy_note

#: Environment variables torch reads for its default thread count, in its order of precedence.
THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count for this process and why; ``threads`` None keeps torch's current count."""

    threads: int | None
    reason: str


# The process's choice, made once: another Trainer in the same process neither changes nor logs it.
_applied: ThreadChoice | None = None


def env_thread_count(environ: Mapping[str, str]) -> tuple[str, int] | None:
    """The first of :data:`THREAD_COUNT_VARIABLES` set, and its value; a clear error for a value that is
    not a positive integer (torch would ignore it or fail later, naming neither)."""
    for name in THREAD_COUNT_VARIABLES:
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(
                f"{name}={environ[name]!r} is not a thread count: set it to a positive integer (e.g. "
                f"{name}=1), or unset it to let grpo-lightning choose."
            )
        return name, value
    return None


def physical_cores(sys_root: Path = Path("/sys/devices/system/cpu")) -> int | None:
    """Physical cores of the machine, as torch counts them for its default (Linux: distinct core ids
    per package over the online CPUs); None where the topology cannot be read."""
    cores = set()
    for cpu in sys_root.glob("cpu[0-9]*"):
        topology = cpu / "topology"
        try:
            cores.add(
                (
                    (topology / "physical_package_id").read_text().strip(),
                    (topology / "core_id").read_text().strip(),
                )
            )
        except OSError:
            continue
    return len(cores) or None


def usable_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup (v2) CPU quota, at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota = cpu_quota(cgroup_cpu_max.read_text())
    except OSError:
        quota = None
    if quota is not None:
        cpus = min(cpus, max(1, int(quota)))
    return max(1, cpus)


def cpu_quota(cpu_max: str) -> float | None:
    """CPUs granted by a cgroup v2 ``cpu.max`` line (``"max 100000"``: none; ``"150000 100000"``: 1.5)."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def choose_threads(
    current: int,
    torch_default: int | None,
    environ: Mapping[str, str],
    cpus: int,
    processes: int = 1,
) -> ThreadChoice:
    """The intra-op thread count for one of ``processes`` training processes on ``cpus`` usable CPUs.

    Args:
        current: ``torch.get_num_threads()`` now.
        torch_default: the count torch starts with when nobody sets one (see :func:`torch_default_threads`);
            None when unknown, which counts as "not set by the user".
        environ: the process environment (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` are the user's choice).
        cpus: CPUs this process may run on (:func:`usable_cpus`).
        processes: training processes sharing those CPUs (the ranks on this node).
    """
    if processes < 1 or cpus < 1:
        raise ValueError(f"processes={processes} and cpus={cpus} must be >= 1.")
    given = env_thread_count(environ)
    if given is not None:
        name, value = given
        return ThreadChoice(None, f"{_count(current, 'thread')} ({name}={value})")
    if torch_default is not None and current != torch_default:
        return ThreadChoice(
            None, f"{_count(current, 'thread')} (set by torch.set_num_threads before training)"
        )
    share = max(1, cpus // processes)
    ceiling = torch_default if torch_default is not None else current
    threads = max(1, min(ceiling, share))
    why = _count(cpus, "usable CPU") + (f" shared by {processes} processes" if processes > 1 else "")
    return ThreadChoice(threads, f"{_count(threads, 'thread')} ({why}; torch's default {ceiling})")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def torch_default_threads(environ: Mapping[str, str]) -> int | None:
    """The intra-op thread count torch starts with: ``OMP_NUM_THREADS``, else ``MKL_NUM_THREADS``, else
    the machine's physical cores (None where they cannot be counted)."""
    given = env_thread_count(environ)
    return given[1] if given is not None else physical_cores()


def apply_thread_policy(processes: int = 1) -> ThreadChoice:
    """Choose and set the intra-op thread count (:func:`choose_threads`) and log it with the wait policy,
    once per process; later calls return the first choice."""
    global _applied
    if _applied is not None:
        return _applied
    choice = choose_threads(
        torch.get_num_threads(), torch_default_threads(os.environ), os.environ, usable_cpus(), processes
    )
    if choice.threads is not None and choice.threads != torch.get_num_threads():
        torch.set_num_threads(choice.threads)
    _applied = choice
    rank_zero_info(f"CPU: {choice.reason}; {wait_policy_note(os.environ)}.")
    return choice
