"""Peak resident memory of a GRPO step on SmolLM2-135M-Instruct, and a measured breakdown of it.

The workload of a CPU run on a real model: 4 prompts x 4 completions of up to 96 tokens per step,
prompts rendered by the chat template, float32, one thread, the default optimizer (AdamW). Variants:
``full`` (full fine-tuning, beta 0), ``lora`` (LoRA r=16 on every projection, beta 0.04: the
reference is the base model with the adapter off) and ``full-beta`` (full fine-tuning, beta 0.04: a
frozen copy of the weights as reference). Each variant runs in its own process (its peak is its own):

    python benchmarks/bench_memory.py --variants full lora full-beta --steps 2 --out memory.txt

``--set micro_batch_size=16`` measures the earlier default (the whole mini-batch in one pass);
``benchmarks/results/memory-smollm2-cpu-1thread.txt`` holds both.

Measured, not only computed: a thread samples the resident set (RSS) every 5 ms, attributed to the
phase running (``PhaseTimer.trace_memory`` of ``workloads.py``, the sampler of ``BENCH_MEMTRACE``),
and the RSS is also read when each phase starts and ends, after ``malloc_trim`` has returned freed
heap pages to the system (``--no-trim`` skips it), so that it counts live memory. The breakdown is
the first step's:

- ``libraries``: RSS after importing torch, transformers, Lightning and this package (interpreter included);
- ``weights``: RSS growth over loading the model (and the peak while loading: the GGUF file is
  dequantized), against parameters x 4 bytes;
- ``reference``: RSS growth over building the module (a frozen copy with beta > 0 and full fine-tuning);
- ``adamw_state``: RSS growth over the first optimizer step, against 2 x trainable parameters x 4 bytes;
- ``gradients``: RSS at the first optimizer step minus RSS at the first log-prob pass (activations
  are freed by then), against trainable parameters x 4 bytes;
- ``logprob_pass``: the highest RSS of the log-prob passes and their backward above what they start
  from (activations kept for the backward, LM-head chunks; the gradients of that micro-batch's
  backward are counted once, above);
- ``sampling``: the highest RSS while sampling above what it starts from (KV cache, logits);
- ``old_or_ref_pass``: the same for the no-grad passes of the reference (or pi_old).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

from grpo_lightning.training.openmp import prepare_openmp

prepare_openmp()  # as the grpo-lightning command does, before torch loads

import torch  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import PhaseTimer, measuring_trainer, peak_rss_mb  # noqa: E402

ALIAS = "builtin:smollm2-135m-instruct"
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {"beta": 0.0},
    "lora": {"beta": 0.04, "lora": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}},
    "full-beta": {"beta": 0.04},
}
MB = 2**20


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
TRIM = True  # --no-trim clears it


def rss_mb() -> float:
    """The current resident set of this process, in MiB; first (unless --no-trim) the C allocator
    returns its free pages to the system, so that the figure counts live memory, not freed blocks
    kept for reuse."""
    if TRIM:
        _LIBC.malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def reward(prompts: list[str], completions: list[str], answer: list[str], **columns: Any) -> list[float]:
    """1 for the right answer in the completion, plus a small length term: every group has a spread,
    so every step updates and every row takes the backward pass (the most memory)."""
    return [float(a in c) + len(c) / 1000 for c, a in zip(completions, answer, strict=True)]


def run_variant(variant: str, steps: int, settings: dict[str, Any]) -> dict[str, Any]:
    """``steps`` GRPO steps of one variant in this process; the measurements as a dict."""
    import lightning as L
    from datasets import Dataset

    import grpo_lightning.algorithm.update as update
    from grpo_lightning.data.datamodule import PromptDataModule
    from grpo_lightning.data.synthetic import generate_problems
    from grpo_lightning.hf.models import load_policy, load_tokenizer
    from grpo_lightning.module import GRPOModule

    torch.set_num_threads(1)
    marks: dict[str, float] = {"libraries": rss_mb()}
    tokenizer = load_tokenizer(None, ALIAS)
    start = time.perf_counter()
    model = load_policy(ALIAS)
    marks["load_s"] = time.perf_counter() - start
    marks["load_peak"] = peak_rss_mb()
    marks["loaded"] = rss_mb()
    params = sum(p.numel() for p in model.parameters())

    timer = PhaseTimer()
    memory = timer.trace_memory()
    entry: dict[str, float] = {}  # RSS when each phase was first entered

    def entered(fn: Any, label: Any) -> Any:
        timed = timer.wrap(fn, label)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            name = label(*args, **kwargs) if callable(label) else label
            entry.setdefault(name, rss_mb())
            return timed(*args, **kwargs)

        return wrapper

    module = GRPOModule(
        model=model,
        tokenizer=tokenizer,
        reward_funcs=[reward],
        num_generations=4,
        max_completion_length=96,
        learning_rate=1e-5,
        warmup_steps=0,
        seed=0,
        **{**VARIANTS[variant], **settings},
    )
    module.configure_model()
    marks["module"] = rss_mb()
    trainable = sum(p.numel() for p in module.policy.parameters() if p.requires_grad)
    module.rollout_engine.generate = entered(module.rollout_engine.generate, "sampling")

    rows_per_pass: set[int] = set()  # the micro-batch sizes the update ran with gradients

    def logp_label(model: Any, input_ids: Any, *args: Any, **kwargs: Any) -> str:
        if torch.is_grad_enabled():
            rows_per_pass.add(len(input_ids))
            return "policy_logp"
        return "ref_logp" if model is module.ref_model or module.ref_model is None else "old_logp"

    update.shared_prefix_logprobs = entered(update.shared_prefix_logprobs, logp_label)
    module.manual_backward = entered(module.manual_backward, "backward")
    optimizer_phase: list[Any] = []

    def pre(opt: Any, args: Any, kwargs: Any) -> None:
        entry.setdefault("optimizer", rss_mb())
        optimizer_phase.append(timer.phase("optimizer"))
        optimizer_phase[-1].__enter__()

    def post(opt: Any, args: Any, kwargs: Any) -> None:
        optimizer_phase.pop().__exit__(None, None, None)
        marks.setdefault("after_first_optimizer_step", rss_mb())

    register_optimizer_step_pre_hook(pre)
    register_optimizer_step_post_hook(post)

    step_ends: list[float] = []
    first_step_peaks: dict[str, float] = {}

    class StepClock(L.Callback):
        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            step_ends.append(time.perf_counter())
            if not first_step_peaks:
                first_step_peaks.update(memory)  # the breakdown is the first step's

    rows = generate_problems(4 * steps, seed=0, min_steps=2, max_steps=2, max_operand=20)
    data = PromptDataModule(
        Dataset.from_list(rows), tokenizer=tokenizer, batch_size=4, prompt_template="{question}",
        val_fraction=0, data_seed=0,
    )  # fmt: skip
    # An interrupted run saves last.ckpt in default_root_dir.
    trainer = measuring_trainer(steps, StepClock(), default_root_dir=tempfile.mkdtemp(prefix="bench-memory-"))
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    step_s = [b - a for a, b in zip([start, *step_ends], step_ends, strict=False)]

    peaks = first_step_peaks
    computed = {
        "weights": params * 4 / MB,
        "reference": (params * 4 / MB) if module.ref_model is not None else 0.0,
        "gradients": trainable * 4 / MB,
        "adamw_state": 2 * trainable * 4 / MB,
    }
    measured = {
        "libraries": marks["libraries"],
        "weights": marks["loaded"] - marks["libraries"],
        "weights_load_peak_extra": marks["load_peak"] - marks["loaded"],
        "reference": marks["module"] - marks["loaded"],
        "adamw_state": marks["after_first_optimizer_step"] - entry["optimizer"],
        "gradients": entry["optimizer"] - entry["policy_logp"],
        "logprob_pass": max(peaks.get("policy_logp", 0), peaks.get("backward", 0)) - entry["policy_logp"],
        "sampling": peaks["sampling"] - entry["sampling"],
    }
    for name in ("ref_logp", "old_logp"):
        if name in entry:
            measured[f"{name}_pass"] = peaks[name] - entry[name]
    return {
        "variant": variant,
        "settings": {**VARIANTS[variant], **settings},
        "micro_batch_size": module.settings.cadence.micro_batch_size,
        "rows_per_backward_pass": sorted(rows_per_pass),
        "parameters": params,
        "trainable_parameters": trainable,
        "peak_rss_mb": peak_rss_mb(),
        "floor_mb": sum(computed.values()),
        "computed_mb": computed,
        "measured_mb": measured,
        "trimmed": TRIM,
        "peak_rss_mb_by_phase": dict(memory),
        "first_step_peak_rss_mb_by_phase": peaks,
        "rss_mb_at_phase_entry": entry,
        "step_s": step_s,
        "load_s": marks["load_s"],
    }


def report(results: list[dict[str, Any]]) -> str:
    """The text of ``benchmarks/results/memory-*.txt``: the machine, then one block per variant."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"# {' '.join(sys.argv)}",
        f"# machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}; 1 thread; "
        f"python {platform.python_version()}",
        f"# uptime at the end: {uptime}",
    ]
    for r in results:
        c, m = r["computed_mb"], r["measured_mb"]
        lines += [
            "",
            f"## {r['variant']} {json.dumps(r['settings'])}  micro_batch_size={r['micro_batch_size']}: "
            f"{r['rows_per_backward_pass']} rows per forward/backward",
            f"peak RSS {r['peak_rss_mb']:.0f} MB; weights + reference + gradients + AdamW = {r['floor_mb']:.0f} MB "
            f"(ratio {r['peak_rss_mb'] / r['floor_mb']:.2f}); step seconds {[round(s, 1) for s in r['step_s']]}",
            f"{'part':<28}{'measured MB':>12}{'computed MB':>12}",
        ]
        for name, value in m.items():
            lines.append(f"{name:<28}{value:>12.0f}{c.get(name, float('nan')):>12.0f}")
        lines.append(
            "peak by phase: "
            + ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["peak_rss_mb_by_phase"].items()))
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["full", "lora"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="extra GRPOModule settings")
    parser.add_argument("--no-trim", action="store_true", help="read the RSS without malloc_trim first")
    parser.add_argument("--out", help="write the report here (printed anyway)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a worker: run this variant, print JSON
    args = parser.parse_args()
    global TRIM
    TRIM = not args.no_trim
    settings = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.one:
        print("BENCH_RESULT " + json.dumps(run_variant(args.one, args.steps, settings)), flush=True)
        return
    results = []
    for variant in args.variants:
        command = [sys.executable, __file__, "--one", variant, "--steps", str(args.steps), "--set", *args.set]
        command += ["--no-trim"] if args.no_trim else []
        out = subprocess.run(command, capture_output=True, text=True)
        found = [line for line in out.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
        if out.returncode or not found:
            sys.exit(f"{variant} failed:\n{out.stderr[-4000:]}")
        results.append(json.loads(found[-1].removeprefix("BENCH_RESULT ")))
    text = report(results)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
            f.write("\n# raw\n" + "\n".join(json.dumps(r) for r in results) + "\n")


if __name__ == "__main__":
    main()
