"""Start-up time: ``grpo-lightning --help`` and ``import grpo_lightning`` against the frameworks alone.

Each command runs in a fresh interpreter; the commands alternate within each round (the order
rotates from round to round), so a busy machine slows them alike. Reported: the median wall time of
each command and the median of the per-round ratios command / baseline, where the baseline imports
``lightning.pytorch`` and ``transformers`` and nothing else; the same ratio of CPU time (user + system
of the child) is reported beside it, which a machine shared with other work disturbs far less than
wall time.

    python benchmarks/bench_startup.py                          # 7 rounds
    python benchmarks/bench_startup.py --rounds 3               # quicker, noisier
    python benchmarks/bench_startup.py --compare ../other-checkout  # also that checkout's package

The package measured is this checkout's (put first on ``PYTHONPATH``); ``--compare DIR`` adds the same
commands for the package in DIR, in the same alternating rounds (before / after a change). Every
command runs in an empty temporary folder, so the working directory cannot shadow the package.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = "import lightning.pytorch, transformers"
REPO = Path(__file__).resolve().parent.parent

Command = tuple[list[str], dict[str, str]]


def package_commands(package_dir: Path, tag: str = "") -> dict[str, Command]:
    """Label -> (argv, environment) for the package in ``package_dir``. The console script is used when
    it is installed next to this interpreter (it imports whichever package comes first on the path)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(package_dir), os.environ.get("PYTHONPATH")])),
    }
    script = shutil.which("grpo-lightning", path=os.path.dirname(sys.executable))
    help_cmd = [script, "--help"] if script else [sys.executable, "-m", "grpo_lightning", "--help"]
    return {
        f"{tag}grpo-lightning --help": (help_cmd, env),
        f"{tag}import grpo_lightning": ([sys.executable, "-c", "import grpo_lightning"], env),
        f"{tag}from grpo_lightning import GRPOModule": (
            [sys.executable, "-c", "from grpo_lightning import GRPOModule"],
            env,
        ),
    }


def commands(compare: Path | None) -> dict[str, Command]:
    """The baseline first, then this checkout's commands, then (optionally) another checkout's."""
    cmds = {
        "baseline: import lightning.pytorch, transformers": (
            [sys.executable, "-c", BASELINE],
            dict(os.environ),
        )
    }
    cmds.update(package_commands(REPO))
    if compare is not None:
        cmds.update(package_commands(compare.resolve(), tag=f"[{compare}] "))
    return cmds


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_once(command: Command, cwd: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run; its output is discarded, a failure raises."""
    argv, env = command
    cpu, start = _children_cpu(), time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    return time.perf_counter() - start, _children_cpu() - cpu


def measure(cmds: dict[str, Command], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """``rounds`` alternating runs of every command; label -> (wall, CPU) seconds per round."""
    labels = list(cmds)
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory() as cwd:
        for command in cmds.values():  # warm the file-system cache once, untimed
            time_once(command, cwd)
        for r in range(rounds):
            order = labels[r % len(labels) :] + labels[: r % len(labels)]
            for label in order:
                times[label].append(time_once(cmds[label], cwd))
    return times


def _ratio(runs: list[tuple[float, float]], base: list[tuple[float, float]], which: int) -> float:
    """Median over rounds of this command's time / the baseline's (``which``: 0 wall, 1 CPU)."""
    return statistics.median(t[which] / b[which] for t, b in zip(runs, base, strict=True))


def report(times: dict[str, list[tuple[float, float]]]) -> str:
    labels = list(times)
    base = times[labels[0]]
    width = max(len(label) for label in labels)
    lines = [f"{'command':<{width}}  median s   min s   wall ratio   CPU ratio"]
    for label in labels:
        walls = [wall for wall, _ in times[label]]
        lines.append(
            f"{label:<{width}}  {statistics.median(walls):8.2f}  {min(walls):6.2f}"
            f"   {_ratio(times[label], base, 0):9.2f}x  {_ratio(times[label], base, 1):9.2f}x"
        )
    lines.append("(ratios: the median over rounds of the command's time / the baseline's in that round)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    parser.add_argument("--compare", type=Path, default=None, help="another checkout to measure alongside")
    args = parser.parse_args()
    times = measure(commands(args.compare), args.rounds)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    print(f"{args.rounds} rounds, commands alternating\n")
    print(report(times))


if __name__ == "__main__":
    main()
