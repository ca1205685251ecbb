"""The GPU check in one command: gpu-marked tests, then rollouts and GRPO steps side by side, against the floor.

    python benchmarks/gpu/run.py --out DIR                  # a CUDA GPU: Qwen2.5-0.5B's shape, bf16
    python benchmarks/gpu/run.py --out DIR --device cpu --tiny   # the same stages in seconds on CPU

Stages, each written to DIR/results.json as soon as it ends (a run cut short keeps what it measured):
1. ``tests``: ``pytest -m gpu`` on the CUDA correctness tests (output in DIR/gpu_tests.txt, .xml).
2. ``hardware``: copy bandwidth and matmul rate, measured here; the model's rollout and step floors.
3. ``rollout``: tokens per second of transformers' ``generate``, the fast engine without CUDA graphs
   (``decoder="lean"``) and with them (the default on CUDA), median of ``--repeats``.
4. ``steps``: optimizer-step time of a full GRPO step (rollout, rewards, log-probs with gradients,
   AdamW) with GRPOModule (fast engine, then ``generate``) and TRL's GRPOTrainer if ``trl`` imports.
DIR/summary.md gives the tables. Stages that would start after ``--budget-s`` seconds are skipped
with a line saying so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# limits/systems/report, the CPU benchmark's workloads, and the package itself (no install needed)
sys.path[:0] = [str(HERE), str(HERE.parent), str(ROOT)]

import torch  # noqa: E402
from limits import Hardware, ModelShape, measure_hardware, rollout_floor, train_floor  # noqa: E402
from report import summary_markdown  # noqa: E402
from systems import Workload, engine_used_graphs, grpo_lightning_steps, time_rollouts, trl_steps  # noqa: E402

GPU_TESTS = ["tests/test_gpu_cuda.py"]
# Qwen2.5-0.5B's shape (random weights): 24 layers, hidden 896, 14 / 2 heads, MLP 4864, tied embeddings.
FULL_MODEL = {
    "hidden_size": 896,
    "num_layers": 24,
    "num_heads": 14,
    "num_kv_heads": 2,
    "intermediate_size": 4864,
}
TINY_MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128}
FULL_VOCAB = 151_936


class Run:
    """The output folder, the time budget and the results written so far."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        self.deadline = time.monotonic() + budget_s
        self.results: dict[str, Any] = {"skipped": [], "failed": []}
        out.mkdir(parents=True, exist_ok=True)
        self.log = (out / "log.txt").open("w")

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def skip(self, what: str, why: str) -> None:
        self.results["skipped"].append(f"{what}: {why}")
        self.say(f"SKIPPED {what}: {why}")

    def attempt(self, what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """``fn()``, or None when it raises: the error is listed and the traceback logged, and the run
        goes on to the next stage (one system's failure must not cost the others' figures)."""
        try:
            return fn()
        except Exception as err:
            self.results["failed"].append(f"{what}: {type(err).__name__}: {err}")
            self.say(f"FAILED {what}: {type(err).__name__}: {err}")
            self.log.write(traceback.format_exc())
            return None

    def save(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2))


def environment(device: torch.device) -> dict[str, Any]:
    import lightning
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "device": device.type,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gb=props.total_memory / 1e9, cuda=torch.version.cuda)
    return env


def run_tests(run: Run, device: torch.device, timeout_s: float) -> dict[str, Any]:
    """``pytest -m gpu`` in a subprocess; counts from its JUnit XML (without CUDA every case skips)."""
    xml = run.out / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", *GPU_TESTS, "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    cmd.append(f"--junitxml={xml}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        output, code = f"{err.stdout or ''}{err.stderr or ''}\nTIMED OUT after {timeout_s:.0f} s", None
    (run.out / "gpu_tests.txt").write_text(output)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in counts}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "exit_code": code, "seconds": time.perf_counter() - start, "command": " ".join(cmd[1:])}


def build(tokenizer: Any, tiny: bool, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The benchmark model, random weights from a fixed seed (so every system starts from the same ones)."""
    from grpo_lightning.hf.tiny import build_tiny_model

    sizes = TINY_MODEL if tiny else FULL_MODEL
    with torch.device(device):  # initialise on the device: seconds, not a minute, for 0.5B weights
        model = build_tiny_model(
            tokenizer, arch="qwen2", vocab_size=None if tiny else FULL_VOCAB,
            max_position_embeddings=4096, seed=0, **sizes,
        )  # fmt: skip
    return model.to(device=device, dtype=dtype)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, summary.md, logs")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model and a small job: seconds on CPU")
    parser.add_argument("--repeats", type=int, default=3, help="measured rollouts / steps per system")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="start no stage after this many seconds"
    )
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here (use --device cpu --tiny for the CPU check).")
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1.")
    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    run = Run(args.out, args.budget_s)
    try:
        import grpo_lightning  # noqa: F401
    except ImportError as err:  # e.g. an optional dependency imported eagerly and missing here
        run.results["error"] = f"importing grpo_lightning failed: {err!r}"
        run.say(f"ERROR {run.results['error']}: install that package or make its import lazy.")
        run.save()
        return 2
    from workloads import build_tokenizer, make_prompts

    work = (
        Workload(prompts=2, generations=4, new_tokens=16, micro_batch_size=None, repeats=args.repeats)
        if args.tiny
        else Workload(prompts=16, generations=8, new_tokens=512, micro_batch_size=32, repeats=args.repeats)
    )
    run.results.update(
        environment=environment(device),
        command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        workload={**work.__dict__, "dtype": str(dtype).removeprefix("torch."), "tiny": args.tiny},
    )
    run.save()

    if args.skip_tests:
        run.skip("tests", "--skip-tests")
    else:
        run.say("== gpu-marked tests")
        run.results["tests"] = tests = run_tests(run, device, timeout_s=min(240.0, max(run.left(), 30.0)))
        run.say(f"tests: {tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
                f"{tests['skipped']} skipped ({tests['seconds']:.0f} s)")  # fmt: skip
        run.save()

    run.say("== hardware and floors")
    tokenizer = build_tokenizer(_spec(args.tiny))
    model = build(tokenizer, args.tiny, device, dtype)
    shape = ModelShape.of(model)
    hw: Hardware = measure_hardware(device, dtype, args.tiny)
    prompts = make_prompts(work.prompts * (1 + work.repeats), seed=0)
    enc = tokenizer(prompts[: work.prompts], return_tensors="pt", padding=True)
    prompt_ids, prompt_mask = enc.input_ids.to(device), enc.attention_mask.to(device)
    sizes = {"prompts": work.prompts, "generations": work.generations, "new_tokens": work.new_tokens}
    floor = rollout_floor(shape, hw, prompt_length=prompt_ids.shape[1], **sizes)
    floor["tokens_per_s"] = work.rows * work.new_tokens / floor["floor_s"]
    floor["train_s"] = train_floor(shape, hw, prompt_length=prompt_ids.shape[1], **sizes)
    floor["step_s"] = floor["floor_s"] + floor["train_s"]
    run.results.update(hardware=hw.to_dict(), model=shape.__dict__, floor=floor)
    run.results["model"]["parameters"] = sum(p.numel() for p in model.parameters())
    run.results["workload"]["prompt_length"] = prompt_ids.shape[1]
    run.say(f"bandwidth {hw.bandwidth_gb_s:.0f} GB/s, matmul {hw.matmul_tflops:.3g} TFLOP/s; rollout floor "
            f"{floor['floor_s']:.3f} s ({floor['tokens_per_s']:.0f} tokens/s), step floor {floor['step_s']:.3f} s")  # fmt: skip
    run.save()

    from grpo_lightning.rollout.engine import HFGenerateEngine
    from grpo_lightning.rollout.engines import FastRolloutEngine

    run.results["rollout"] = {}
    engines = {"fast (graphs)": FastRolloutEngine(), "fast (no graphs)": FastRolloutEngine("lean")}
    if device.type != "cuda":
        engines = {"fast": FastRolloutEngine()}  # no graphs off CUDA: one fast variant
    engines["generate"] = HFGenerateEngine()
    for name, engine in engines.items():
        if run.left() <= 0:
            run.skip(f"rollout {name}", "out of the time budget")
            continue
        got = run.attempt(
            f"rollout {name}",
            lambda engine=engine, model=model: time_rollouts(
                engine, model, prompt_ids, prompt_mask, work, tokenizer.eos_token_id, tokenizer.pad_token_id
            ),
        )
        if got is None:
            free(device)
            continue
        got["cuda_graphs"] = engine_used_graphs(engine)
        got["x_floor"] = got["seconds"] / floor["floor_s"]
        run.results["rollout"][name] = got
        run.say(f"rollout {name}: {got['tokens_per_s']:.0f} tokens/s ({got['seconds']:.3f} s, "
                f"{got['x_floor']:.1f}x floor)")  # fmt: skip
        run.save()
        free(device)
    del model
    free(device)

    run.results["steps"] = {}
    precision = "bf16-true" if dtype == torch.bfloat16 else "32-true"
    systems = {
        "grpo_lightning": lambda m: grpo_lightning_steps(m, tokenizer, prompts, work, "auto", device, precision),
        "trl": lambda m: trl_steps(m, tokenizer, prompts, work, device, bf16=dtype == torch.bfloat16),
        "grpo_lightning + generate": lambda m: grpo_lightning_steps(m, tokenizer, prompts, work, "hf", device, precision),
    }  # fmt: skip
    for name, fn in systems.items():
        if name == "trl" and not _importable("trl", "datasets"):
            run.skip(
                "steps trl",
                "trl (or datasets) is not importable: see benchmarks/gpu/README.md for the wheels",
            )
            continue
        if run.left() <= 0:
            run.skip(f"steps {name}", "out of the time budget")
            continue
        got = run.attempt(f"steps {name}", lambda fn=fn: fn(build(tokenizer, args.tiny, device, dtype)))
        if got is None:
            free(device)
            continue
        got["x_floor"] = got["step_s"] / floor["step_s"]
        run.results["steps"][name] = got
        run.say(f"steps {name}: {got['step_s']:.3f} s/step, {got['x_floor']:.1f}x floor")
        run.save()
        free(device)

    (run.out / "summary.md").write_text(summary_markdown(run.results))
    run.say((run.out / "summary.md").read_text())
    tests = run.results.get("tests")
    failed = run.results["failed"] or (
        tests and (tests["failures"] or tests["errors"] or tests["exit_code"] != 0)
    )
    return 1 if failed else 0


def _spec(tiny: bool) -> Any:
    from workloads import ModelSpec

    sizes = TINY_MODEL if tiny else FULL_MODEL
    return ModelSpec(
        hidden_size=sizes["hidden_size"], num_layers=sizes["num_layers"], num_heads=sizes["num_heads"],
        num_kv_heads=sizes["num_kv_heads"], intermediate_size=sizes["intermediate_size"],
        vocab_size=None if tiny else FULL_VOCAB,
    )  # fmt: skip


def _importable(*names: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(n) is not None for n in names)


if __name__ == "__main__":
    sys.exit(main())
