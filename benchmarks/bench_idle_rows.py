"""Rows without a learning signal: the training step with and without their backward pass, side by side.

With ``beta == 0`` a completion whose advantage is 0 (its group scored all the same) has exactly zero
gradient, so the update gives those rows a no-grad forward pass (for the logged entropy and ratio
metrics) instead of a forward and backward pass. This runs the same GRPO steps of a config both ways,
each in its own process, alternating ``--pairs`` times, and reports the CPU seconds per training step,
the share of rows that had advantage 0, the ratio, and the largest difference between the final
weights of the two ways (the first pair's).

    python benchmarks/bench_idle_rows.py                              # the quickstart, 20 steps, 3 pairs
    python benchmarks/bench_idle_rows.py --steps 40 --pairs 5 --set data.batch_size=32

``--set key=value`` overrides the config as the command line would; ``model.beta=0`` is always set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def child(args: argparse.Namespace) -> None:
    """One run: ``args.steps`` training steps, the idle-row skip on or off; prints a JSON line."""
    import torch
    from lightning.pytorch import Callback, Trainer

    sys.path.insert(0, str(HERE / "learning"))
    from learning_task import load_task

    from grpo_lightning.training.step import TrainingStep

    torch.set_num_threads(args.threads)
    task = load_task(args.config, ["model.beta=0", *args.set])
    if args.child == "off":
        TrainingStep._can_skip_idle_rows = lambda self: False  # type: ignore[method-assign]

    class Clock(Callback):
        def __init__(self) -> None:
            self.idle = self.rows = 0
            self.cpu = self.wall = 0.0

        def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
            self.cpu, self.wall = time.process_time(), time.perf_counter()

        def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            advantages = outputs["advantages"]
            self.idle += int(advantages.eq(0).sum())
            self.rows += advantages.numel()

        def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
            self.cpu, self.wall = time.process_time() - self.cpu, time.perf_counter() - self.wall

    clock = Clock()
    kwargs = {**task.trainer_kwargs, "max_steps": args.steps, "callbacks": [clock], "default_root_dir": args.out}
    Trainer(**kwargs).fit(task.module, datamodule=task.datamodule)
    torch.save({k: v.detach().clone() for k, v in task.module.policy.state_dict().items()}, args.out + "/weights.pt")
    print(json.dumps({"cpu": clock.cpu, "wall": clock.wall, "idle": clock.idle, "rows": clock.rows}))


def run(args: argparse.Namespace, mode: str, out: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", mode, "--out", out, "--config", args.config]
    cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
    for item in args.set:
        cmd += ["--set", item]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--set", action="append", default=[], help="key=value override of the config")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--pairs", type=int, default=3, help="alternating (skip, no skip) pairs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import torch

    results: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            for mode in ("on", "off") if pair % 2 == 0 else ("off", "on"):
                out = f"{tmp}/{mode}{pair}"
                Path(out).mkdir()
                results[mode].append(run(args, mode, out))
        on, off = torch.load(f"{tmp}/on0/weights.pt"), torch.load(f"{tmp}/off0/weights.pt")
        max_diff = max(float((on[k] - off[k]).abs().max()) for k in on)

    per_step = {mode: [r["cpu"] / args.steps for r in runs] for mode, runs in results.items()}
    ratios = [b / a for a, b in zip(per_step["on"], per_step["off"], strict=True)]
    idle = results["on"][0]["idle"] / results["on"][0]["rows"]
    print(f"{args.config} {' '.join(args.set)} beta=0: {args.steps} training steps per run, {args.threads} thread(s)")
    print(f"rows with advantage 0: {idle:.1%} of {results['on'][0]['rows']}")
    print("| backward for rows with advantage 0 | CPU s per step (median) | per run |")
    print("|---|---|---|")
    labels = {"on": "skipped (no-grad forward only)", "off": "run as for every row"}
    for mode in ("on", "off"):
        values = ", ".join(f"{v:.3f}" for v in per_step[mode])
        print(f"| {labels[mode]} | {statistics.median(per_step[mode]):.3f} | {values} |")
    print(f"speed-up (CPU time without the skip / with it, median of pairs): {statistics.median(ratios):.2f}x")
    print(f"largest difference between the final weights (first pair): {max_diff:.2e}")


if __name__ == "__main__":
    main()
