"""Start-up time: ``grpo-lightning --help`` and ``import grpo_lightning`` against the frameworks alone.

Each command runs in a fresh interpreter; the commands alternate within each round (the order
rotates from round to round), so a busy machine slows them alike. Reported: the median wall time of
each command and the median of the per-round ratios command / baseline, where the baseline imports
``lightning.pytorch`` and ``transformers`` and nothing else.

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


def time_once(command: Command, cwd: str) -> float:
    """Wall seconds of one run; its output is discarded, a failure raises."""
    argv, env = command
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    return time.perf_counter() - start


def measure(cmds: dict[str, Command], rounds: int) -> dict[str, list[float]]:
    """``rounds`` alternating runs of every command; label -> seconds per round."""
    labels = list(cmds)
    times: dict[str, list[float]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory() as cwd:
        for command in cmds.values():  # warm the file-system cache once, untimed
            time_once(command, cwd)
        for r in range(rounds):
            order = labels[r % len(labels) :] + labels[: r % len(labels)]
            for label in order:
                times[label].append(time_once(cmds[label], cwd))
    return times


def report(times: dict[str, list[float]]) -> str:
    labels = list(times)
    base = times[labels[0]]
    width = max(len(label) for label in labels)
    lines = [f"{'command':<{width}}  median s   min s   ratio to baseline (median of per-round ratios)"]
    for label in labels:
        ratio = statistics.median(t / b for t, b in zip(times[label], base, strict=True))
        lines.append(
            f"{label:<{width}}  {statistics.median(times[label]):8.2f}  {min(times[label]):6.2f}   {ratio:.2f}x"
        )
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
