"""GRPO against three supervised baselines at equal training time, from the same start checkpoint,
evaluated on the same held-out problems.

    python benchmarks/learning/compare.py --config configs/quickstart.yaml --budget 240 --seeds 0 1 2 \
        --out benchmarks/results/learning

Each (method, seed) trains in its own process (run_method.py); the methods of one seed run one after
the other, in a rotated order per seed, so that the machine's load reaches them alike. Writes
``results.json`` (every snapshot of every run), ``table.md`` and ``accuracy_vs_time.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from learning_report import summarize, write_report  # noqa: E402
from run_method import METHODS, add_run_arguments  # noqa: E402


def forwarded(args: argparse.Namespace) -> list[str]:
    """The run settings of ``args`` as run_method.py options."""
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    out: list[str] = []
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or value is None or action.dest == "help":
            continue
        flag = action.option_strings[0]
        if isinstance(value, bool):  # a switch
            out += [flag] if value else []
        elif isinstance(value, list):  # --set, repeatable
            for item in value:
                out += [flag, item]
        else:
            out += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return out


def run_order(methods: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:
    """Every (method, seed), seed by seed, the order of the methods rotated by one for each seed."""
    order = []
    for i, seed in enumerate(seeds):
        shift = i % len(methods)
        order += [(m, seed) for m in [*methods[shift:], *methods[:shift]]]
    return order


def launch(args: argparse.Namespace, method: str, seed: int, first: bool) -> dict[str, Any]:
    """Run one (method, seed) in a fresh process; its output goes to ``<out>/logs/``."""
    name = f"{method}-seed{seed}"
    record_path = os.path.join(args.out, "runs", f"{name}.json")
    log_path = os.path.join(args.out, "logs", f"{name}.log")
    command = [sys.executable, os.path.join(HERE, "run_method.py"), *forwarded(args)]
    command += ["--method", method, "--seed", str(seed), "--out", record_path]
    if first:
        command.append("--final-start")  # the start weights are the same for every run: evaluate them once
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{name} failed (exit code {code}); its log {log_path} ends with:\n{tail}")
    with open(record_path) as f:
        return json.load(f)


def finished_runs(out: str, order: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    """The records in ``<out>/runs/`` of the runs of ``order`` that finished (a comparison stopped
    before its last seeds can still be reported); refuses when none has."""
    paths = [os.path.join(out, "runs", f"{method}-seed{seed}.json") for method, seed in order]
    runs = []
    for path in paths:
        if os.path.isfile(path):
            with open(path) as f:
                runs.append(json.load(f))
    if not runs:
        raise FileNotFoundError(f"--report-only: none of {paths} exists; run the comparison first.")
    return runs


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Run every (method, seed) and write the results, table and plot; returns the results."""
    for sub in ("runs", "logs"):
        os.makedirs(os.path.join(args.out, sub), exist_ok=True)
    meta = {
        "command": args.command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }
    order = run_order(args.methods, args.seeds)

    def one(i: int) -> dict[str, Any]:
        method, seed = order[i]
        run = launch(args, method, seed, first=i == 0)
        first_acc, last_acc = (run["snapshots"][k]["accuracy"] for k in (0, -1))
        print(f"{method} seed {seed}: {first_acc:.3f} -> {last_acc:.3f} in {run['steps']} steps", flush=True)
        return run

    if args.report_only:
        runs = finished_runs(args.out, order)
    else:
        # With --jobs 2, two runs share the machine at any time; consecutive runs in ``order`` are
        # different methods, so each method meets the same company.
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            runs = list(pool.map(one, range(len(order))))
    meta["loadavg_end"] = os.getloadavg()
    summary = summarize(runs)
    results = {"meta": meta, "settings": vars(args), "summary": summary, "runs": runs}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = write_report(summary, runs, meta, args.out)
    print(table, flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once (each with --threads threads); 1 = one after another",
    )
    parser.add_argument("--out", default="benchmarks/results/learning", help="folder for the results")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the results, table and plot from the runs already in --out/runs/",
    )
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    args.command = " ".join(["python benchmarks/learning/compare.py", *given])
    return compare(args)


if __name__ == "__main__":
    main()
