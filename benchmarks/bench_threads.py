"""CPU time per training step on an idle and on a busy CPU: the thread policy's effect on the quickstart.

    python benchmarks/bench_threads.py --code . --code ../old-checkout --busy 2 --steps 3 --rounds 2

Runs ``python -m grpo_lightning fit --config configs/quickstart.yaml`` (validation off, one warm-up
step, then ``--steps`` timed steps) with each ``--code`` checkout first on ``PYTHONPATH``, alternately
idle and with ``--busy`` processes that each keep a core busy (started and killed here), interleaving
the checkouts so a slow phase of the machine hits all of them alike. For each run it reports the
medians over the timed steps of the process CPU time (all threads) and the wall-clock time per step,
the intra-op thread count, the OpenMP spin count the runtime started with, and the load average
(1 minute) before and after; then, per checkout, the ratio of busy to idle CPU time (goal: at most 1.3).
``--env NAME=VALUE`` adds a variable to every run (e.g. ``OMP_WAIT_POLICY=ACTIVE`` to see the old
spinning under the new code).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from workloads import busy_processes  # noqa: E402

OVERRIDES = [
    "--trainer.num_sanity_val_steps=0",
    "--trainer.limit_val_batches=0",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--model.log_completions_every_n_steps=0",
    "--trainer.callbacks+=step_clock.StepClock",
]


def run_once(code: str, steps: int, extra_env: dict[str, str]) -> dict[str, Any]:
    """One quickstart run of ``steps`` timed steps (after one warm-up) with ``code`` first on PYTHONPATH."""
    with tempfile.TemporaryDirectory() as root:
        clock = os.path.join(root, "clock.jsonl")
        env = {
            **os.environ,
            **extra_env,
            "PYTHONPATH": os.pathsep.join([os.path.abspath(code), HERE]),
            "BENCH_CLOCK_FILE": clock,
            "OMP_DISPLAY_ENV": "VERBOSE",  # the runtime prints its settings: the spin count it really uses
        }
        cmd = [sys.executable, "-m", "grpo_lightning", "fit", "--config", os.path.join(REPO, "configs", "quickstart.yaml"),
               f"--trainer.max_steps={steps + 1}", f"--trainer.default_root_dir={root}", *OVERRIDES]  # fmt: skip
        load_before = os.getloadavg()[0]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(clock) as f:
            marks = [json.loads(line) for line in f]
    spin = [
        line.split("=")[1].strip().strip("'") for line in proc.stderr.splitlines() if "GOMP_SPINCOUNT" in line
    ]
    walls = [b["wall"] - a["wall"] for a, b in itertools.pairwise(marks)]
    cpus = [b["cpu"] - a["cpu"] for a, b in itertools.pairwise(marks)]
    return {
        "cpu_s": statistics.median(cpus),
        "wall_s": statistics.median(walls),
        "threads": marks[-1]["threads"],
        "spincount": spin[0] if spin else "?",
        "load": (load_before, os.getloadavg()[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--code", action="append", default=None, help="a checkout to run (repeat; default: this one)"
    )
    parser.add_argument("--busy", type=int, default=2, help="busy processes for the loaded runs")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=1, help="idle + busy rounds")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for every run")
    args = parser.parse_args()
    codes = args.code or [REPO]
    extra = dict(item.split("=", 1) for item in args.env)
    print(f"{os.cpu_count()} CPUs; quickstart, {args.steps} timed steps per run; busy = {args.busy} processes "
          f"'while True: pass'; extra env {extra or '-'}; command: {' '.join(sys.argv)}")  # fmt: skip
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_ in range(args.rounds):
        for load in ("idle", "busy"):
            with busy_processes(args.busy if load == "busy" else 0):
                order = codes if round_ % 2 == 0 else codes[::-1]
                for code in order:
                    r = run_once(code, args.steps, extra)
                    results.setdefault((code, load), []).append(r)
                    print(f"[{time.strftime('%H:%M:%S')}] {code:<24} {load:<5} CPU {r['cpu_s']:6.2f} s/step  "
                          f"wall {r['wall_s']:6.2f} s/step  threads {r['threads']}  GOMP_SPINCOUNT {r['spincount']:>7}  "
                          f"load {r['load'][0]:.1f} -> {r['load'][1]:.1f}", flush=True)  # fmt: skip
    print("\nmedians over rounds:")
    for code in codes:
        idle = statistics.median(r["cpu_s"] for r in results[(code, "idle")])
        busy = statistics.median(r["cpu_s"] for r in results[(code, "busy")])
        idle_wall = statistics.median(r["wall_s"] for r in results[(code, "idle")])
        busy_wall = statistics.median(r["wall_s"] for r in results[(code, "busy")])
        print(f"{code:<24} CPU s/step idle {idle:.2f}, busy {busy:.2f}: busy/idle {busy / idle:.2f}x; "
              f"wall s/step idle {idle_wall:.2f}, busy {busy_wall:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
