"""The summary of a run: tables of the measured figures, each against its floor and its reference system."""

from __future__ import annotations

from typing import Any


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _flag(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _table(header: list[str], rows: dict[str, list[str]]) -> list[str]:
    """A markdown table (and a blank line after it), or nothing when there are no rows."""
    if not rows:
        return []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([name, *cells]) + " |" for name, cells in rows.items()]
    return [*lines, ""]


def summary_markdown(results: dict[str, Any]) -> str:
    """Markdown tables from a ``results.json`` dict (stages that did not run are left out or listed)."""
    env, work, floor, hw = results["environment"], results["workload"], results["floor"], results["hardware"]
    where = env.get("gpu") or f"CPU ({env['cpu_count']} cores, load {env['load_average'][0]:.1f})"
    lines = [
        f"# GPU benchmark: {where}",
        "",
        f"`{results['command']}`: torch {env['torch']}, transformers {env['transformers']}, "
        f"lightning {env['lightning']}.",
        f"Model: {results['model']['parameters'] / 1e6:.3g}M parameters, {results['model']['layers']} layers, "
        f"hidden {results['model']['hidden']}, vocabulary {results['model']['vocab']}, {work['dtype']}. "
        f"Workload: {work['prompts']} prompts x {work['generations']} samples x {work['new_tokens']} tokens "
        f"(prompt width {work['prompt_length']}), median of {work['repeats']} after one warm-up.",
        f"Measured: copy bandwidth {hw['bandwidth_gb_s']:.0f} GB/s, {hw['matmul_size']}^3 matmul "
        f"{hw['matmul_tflops']:.3g} TFLOP/s. Floors: rollout {_fmt(floor['floor_s'])} s "
        f"({floor['tokens_per_s']:.0f} tokens/s; bytes alone {_fmt(floor['decode_bytes_s'])} s, FLOPs alone "
        f"{_fmt(floor['decode_flops_s'])} s), training pass {_fmt(floor['train_s'])} s, step {_fmt(floor['step_s'])} s.",
        "",
    ]
    tests = results.get("tests")
    if tests:
        lines += [
            f"Tests (`{tests['command']}`): {tests['passed']} passed, {tests['failures']} failed, "
            f"{tests['errors']} errors, {tests['skipped']} skipped.",
            "",
        ]
    rollout = results.get("rollout") or {}
    base = rollout.get("generate")
    lines += _table(
        ["rollout", "tokens/s", "seconds", "x floor", "vs generate", "peak memory GB", "CUDA graphs"],
        {
            name: [f"{r['tokens_per_s']:.0f}", _fmt(r["seconds"]), f"{r['x_floor']:.2f}",
                   _ratio(r["tokens_per_s"] / base["tokens_per_s"] if base else None),
                   _fmt(r["peak_memory_gb"], 2), _flag(r.get("cuda_graphs"))]
            for name, r in rollout.items()
        },
    )  # fmt: skip
    steps = results.get("steps") or {}
    base = steps.get("trl")
    lines += _table(
        ["GRPO step", "s/step", "sampling s", "x floor", "speed-up vs TRL", "peak memory GB", "CUDA graphs"],
        {
            name: [_fmt(r["step_s"]), _fmt(r["sampling_s"]), f"{r['x_floor']:.2f}",
                   _ratio(base["step_s"] / r["step_s"] if base else None), _fmt(r["peak_memory_gb"], 2),
                   _flag(r.get("cuda_graphs"))]
            for name, r in steps.items()
        },
    )  # fmt: skip
    lines += [f"Failed: {s}" for s in results.get("failed", [])]
    lines += [f"Skipped: {s}" for s in results.get("skipped", [])]
    return "\n".join(lines) + "\n"
