"""Worker: train one method for one seed within the budget, evaluate its snapshots, write one JSON file.

Started in its own process by compare.py (one process per run, so runs share nothing):
    python benchmarks/learning/run_method.py --config configs/quickstart.yaml --method grpo --seed 0 \
        --budget 240 --out run.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from budget import BudgetClock

METHODS = ("grpo", "sft_worked", "sft_answers", "rft")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings of a run; compare.py takes the same ones and passes them on."""
    parser.add_argument("--config", required=True, help="the training config (task, start model, GRPO)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. data.max_val_samples=50",
    )
    parser.add_argument("--budget", type=float, default=240.0, help="seconds of training per run")
    parser.add_argument("--marks", type=int, default=8, help="snapshots at budget*i/marks, i = 0..marks")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="what the budget counts")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--sft-lr", type=float, default=1.3e-3)
    parser.add_argument("--sft-batch-size", type=int, default=64)
    parser.add_argument(
        "--sft-warmup", type=int, default=0, help="linear warmup steps of the SFT learning rate"
    )
    parser.add_argument(
        "--worked-data",
        type=json.loads,
        default=None,
        help="generate_problems knobs of the worked solutions (JSON)",
    )
    parser.add_argument("--worked-pool", type=int, default=None, help="number of worked problems")
    parser.add_argument("--rft-chunk", type=int, default=256, help="training problems sampled per RFT round")
    parser.add_argument("--rft-generations", type=int, default=8, help="samples per problem in RFT")
    parser.add_argument(
        "--rft-prompts-per-call", type=int, default=16, help="problems per sampling call in RFT"
    )
    parser.add_argument(
        "--rft-keep-duplicates",
        action="store_true",
        help="train RFT on every correct sample, not each distinct one once",
    )
    parser.add_argument(
        "--eval-batch-size", type=int, default=None, help="default: the config's val_batch_size"
    )
    parser.add_argument(
        "--eval-threads",
        type=int,
        default=1,
        help="torch threads for evaluating the snapshots (outside the budget; 1 suffers least on a busy machine)",
    )
    parser.add_argument(
        "--final-samples", type=int, default=0, help="N samples per held-out problem at the end (0 = off)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.method`` for ``args.seed`` and return the run's record (see the README)."""
    from learning_task import load_task
    from lightning.pytorch import seed_everything
    from sft_methods import WORKED_DATA, WORKED_POOL, RFTSettings, SFTSettings, rft, sft_answers, sft_worked

    torch.set_num_threads(args.threads)
    task = load_task(args.config, args.set)
    seed_everything(args.seed, verbose=False)  # after the config's own seed_everything
    clock = BudgetClock(task.module.policy, args.budget, args.marks, args.clock)
    sft = SFTSettings(lr=args.sft_lr, warmup=args.sft_warmup, batch_size=args.sft_batch_size)
    load_start, wall0, cpu0 = os.getloadavg(), time.perf_counter(), time.process_time()
    if args.method == "grpo":
        from grpo_method import grpo

        counters = grpo(task, clock, os.path.join(os.path.dirname(os.path.abspath(args.out)), "scratch"))
    elif args.method == "sft_worked":
        data = args.worked_data if args.worked_data is not None else WORKED_DATA
        counters = sft_worked(task, clock, sft, args.seed, data, args.worked_pool or WORKED_POOL)
    elif args.method == "sft_answers":
        counters = sft_answers(task, clock, sft, args.seed)
    else:
        settings = RFTSettings(
            args.rft_chunk, args.rft_generations, args.rft_prompts_per_call, not args.rft_keep_duplicates
        )
        counters = rft(task, clock, sft, settings, args.seed)
    train_wall, train_cpu = clock.elapsed()
    record: dict[str, Any] = {
        "method": args.method,
        "seed": args.seed,
        "budget": args.budget,
        "clock": args.clock,
        "threads": args.threads,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "train_wall": train_wall,
        "train_cpu": train_cpu,
        "process_wall": time.perf_counter() - wall0,
        "process_cpu": time.process_time() - cpu0,
        "steps": counters.steps,
        "samples": counters.samples,
        "extra": counters.extra,
        "held_out_size": len(task.held_out),
    }
    record.update(evaluate_snapshots(task, clock, args))
    return record


def evaluate_snapshots(task: Any, clock: BudgetClock, args: argparse.Namespace) -> dict[str, Any]:
    """Greedy held-out accuracy of every snapshot; ``final_evaluation`` of the last (and first) one."""
    from held_out import final_evaluation, greedy_accuracy

    t0 = time.perf_counter()
    torch.set_num_threads(args.eval_threads)
    policy, dm = task.module.policy, task.datamodule
    batch = args.eval_batch_size or dm.hparams.val_batch_size or dm.hparams.batch_size
    accuracy: dict[int, float] = {}  # by id of the weights: marks passed in one unit share them
    snapshots = []
    for snap in clock.snapshots:
        if id(snap.state) not in accuracy:
            policy.load_state_dict(snap.state)
            accuracy[id(snap.state)] = greedy_accuracy(task.module, dm, task.held_out, batch)
        row = {k: getattr(snap, k) for k in ("mark", "time", "wall", "cpu", "steps", "samples")}
        snapshots.append({**row, "accuracy": accuracy[id(snap.state)]})
    out: dict[str, Any] = {"snapshots": snapshots}
    if args.final_samples > 0:
        for key, snap in (("final_start", clock.snapshots[0]), ("final_end", clock.snapshots[-1])):
            if key == "final_start" and not args.final_start:
                continue
            policy.load_state_dict(snap.state)
            out[key] = final_evaluation(
                task.module, dm, task.held_out, num_samples=args.final_samples, batch_size=batch
            )
    out["eval_wall"] = time.perf_counter() - t0
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--final-start", action="store_true", help="also final-evaluate the start weights")
    parser.add_argument("--out", required=True, help="the run's JSON file")
    args = parser.parse_args(argv)
    record = run(args)
    with open(args.out, "w") as f:
        json.dump(record, f)
    accs = " ".join(f"{s['accuracy']:.3f}" for s in record["snapshots"])
    print(
        f"{args.method} seed {args.seed}: {record['steps']} steps, {record['train_wall']:.1f} s wall / "
        f"{record['train_cpu']:.1f} s CPU of training; held-out greedy accuracy at the marks: {accs}",
        flush=True,
    )


if __name__ == "__main__":
    main()
