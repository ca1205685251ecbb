"""Start-up time: ``grpo-lightning --help`` and ``import grpo_lightning`` against the frameworks alone.

Each command runs in a fresh interpreter; the commands alternate within each round (the order
rotates from round to round), so a busy machine slows them alike. Reported: the median wall time of
each command and the median of the per-round ratios command / baseline, where the baseline imports
``lightning.pytorch`` and ``transformers`` and nothing else.

    python benchmarks/bench_startup.py               # 7 rounds
    python benchmarks/bench_startup.py --rounds 3    # quicker, noisier

Run it from the repository root (or with the package on ``PYTHONPATH``): the package imported is the
one Python finds first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

BASELINE = "import lightning.pytorch, transformers"


def commands() -> dict[str, list[str]]:
    """Label -> argv. The console script is used when it is installed next to this interpreter."""
    script = shutil.which("grpo-lightning", path=os.path.dirname(sys.executable))
    help_cmd = [script, "--help"] if script else [sys.executable, "-m", "grpo_lightning", "--help"]
    return {
        "baseline: import lightning.pytorch, transformers": [sys.executable, "-c", BASELINE],
        "grpo-lightning --help": help_cmd,
        "import grpo_lightning": [sys.executable, "-c", "import grpo_lightning"],
        "from grpo_lightning import GRPOModule": [
            sys.executable,
            "-c",
            "from grpo_lightning import GRPOModule",
        ],
    }


def time_once(argv: list[str]) -> float:
    """Wall seconds of one run; its output is discarded, a failure raises."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def measure(cmds: dict[str, list[str]], rounds: int) -> dict[str, list[float]]:
    """``rounds`` alternating runs of every command; label -> seconds per round."""
    labels = list(cmds)
    for argv in cmds.values():  # warm the file-system cache once, untimed
        time_once(argv)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            times[label].append(time_once(cmds[label]))
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
    args = parser.parse_args()
    times = measure(commands(), args.rounds)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    print(f"{args.rounds} rounds, commands alternating\n")
    print(report(times))


if __name__ == "__main__":
    main()
