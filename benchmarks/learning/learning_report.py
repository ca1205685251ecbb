"""The comparison's summary: per method the held-out accuracy at each mark across seeds, a Markdown
table and a plot of accuracy against training time."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

LABELS = {
    "grpo": "GRPO (answers only)",
    "sft_worked": "SFT, worked solutions",
    "sft_answers": "SFT, answers only",
    "rft": "RFT (rejection sampling)",
}


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method (in the order first seen): ``seeds``, ``marks``, ``accuracy[seed][mark]``, the mean /
    min / max curve over seeds, ``times[seed][mark]`` (when each snapshot was actually taken) and their
    mean ``time_mean``, ``start`` and ``end`` accuracy and ``end_time`` per seed, steps and samples.

    Raises:
        ValueError: two runs of a method have different marks (another budget or number of marks).
    """
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        marks = [s["mark"] for s in run["snapshots"]]
        m = out.setdefault(
            run["method"],
            {"seeds": [], "marks": marks, "accuracy": [], "times": [], "steps": [], "samples": []},
        )
        if marks != m["marks"]:
            raise ValueError(
                f"{run['method']} seed {run['seed']} has snapshots at {marks}, another run at {m['marks']}: "
                "compare runs of one budget and one number of marks."
            )
        m["seeds"].append(run["seed"])
        m["accuracy"].append([s["accuracy"] for s in run["snapshots"]])
        m["steps"].append(run["steps"])
        m["samples"].append(run["samples"])
        # Each snapshot is taken when the unit of work that reaches its mark ends: at or past the mark.
        m["times"].append([s["time"] for s in run["snapshots"]])
    for m in out.values():
        columns = list(zip(*m["accuracy"], strict=True))
        m["mean"] = [statistics.fmean(c) for c in columns]
        m["min"] = [min(c) for c in columns]
        m["max"] = [max(c) for c in columns]
        m["time_mean"] = [statistics.fmean(c) for c in zip(*m["times"], strict=True)]
        m["end_time"] = [t[-1] for t in m["times"]]
        m["start"] = [a[0] for a in m["accuracy"]]
        m["end"] = [a[-1] for a in m["accuracy"]]
        m["end_std"] = statistics.stdev(m["end"]) if len(m["end"]) > 1 else None
    return out


def load_range(runs: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Lowest and highest 1-minute load average seen at the start or end of any run."""
    loads = [r[k][0] for r in runs for k in ("loadavg_start", "loadavg_end")]
    return min(loads), max(loads)


def table_markdown(
    summary: dict[str, dict[str, Any]], runs: Sequence[dict[str, Any]], meta: dict[str, Any]
) -> str:
    """The results table: start and end-of-budget accuracy per method, mean and spread over seeds."""
    budget, clock = runs[0]["budget"], runs[0]["clock"]
    low, high = load_range(runs)
    lines = [
        f"Greedy accuracy on the {runs[0]['held_out_size']} held-out problems after {budget:g} s of training "
        f"({'wall-clock' if clock == 'wall' else 'process CPU'} time, {runs[0]['threads']} threads per run), "
        f"{_seed_counts(summary)}; 1-minute load average {low:.1f}-{high:.1f} on "
        f"{meta.get('cpu_count', '?')} cores.",
        "",
        "| method | start | end of budget: mean | std | min-max | gain (mean) | per seed | optimizer steps (mean) "
        "| end snapshot taken at (s, mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, m in summary.items():
        start, end = statistics.fmean(m["start"]), statistics.fmean(m["end"])
        std = f"{m['end_std']:.3f}" if m["end_std"] is not None else "-"
        per_seed = ", ".join(f"{s}: {e:.3f}" for s, e in zip(m["seeds"], m["end"], strict=True))
        lines.append(
            f"| {LABELS.get(method, method)} | {start:.3f} | **{end:.3f}** | {std} | {min(m['end']):.3f}-"
            f"{max(m['end']):.3f} | {end - start:+.3f} | {per_seed} | {statistics.fmean(m['steps']):.0f} "
            f"| {statistics.fmean(m['end_time']):.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(
    summary: dict[str, dict[str, Any]], runs: Sequence[dict[str, Any]], meta: dict[str, Any], path: str
) -> None:
    """Accuracy against training seconds: the mean over seeds per method, with a min-max band, each
    point at the mean time its snapshots were actually taken (a method whose units of work are long
    shows its last point past the budget)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    low, high = load_range(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, m in summary.items():
        (line,) = ax.plot(
            m["time_mean"],
            m["mean"],
            marker="o",
            label=f"{LABELS.get(method, method)} ({_seeds(len(m['seeds']))})",
        )
        if len(m["seeds"]) > 1:
            ax.fill_between(m["time_mean"], m["min"], m["max"], color=line.get_color(), alpha=0.2)
    ax.axvline(runs[0]["budget"], color="gray", linestyle="--", linewidth=1, label="budget")
    clock = "wall-clock" if runs[0]["clock"] == "wall" else "process CPU"
    ax.set_xlabel(f"training time ({clock} seconds, evaluation excluded)")
    ax.set_ylabel(f"greedy accuracy, {runs[0]['held_out_size']} held-out problems")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(
        f"Same start, same held-out problems, equal training time\n"
        f"{meta.get('cpu_count', '?')} CPU cores, 1-min load average {low:.1f}-{high:.1f}; band: min-max over seeds",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _seed_counts(summary: dict[str, dict[str, Any]]) -> str:
    """"3 seeds", or "3-5 seeds per method" when the methods were run with different numbers of seeds."""
    counts = sorted({len(m["seeds"]) for m in summary.values()})
    return _seeds(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds per method"


#: The final-evaluation figures the table shows, by their names in a run's ``final_end``.
def _final_columns(num_samples: int) -> list[str]:
    return ["greedy", f"mean@{num_samples}", "pass@1", f"pass@{num_samples}", "maj@1", f"maj@{num_samples}"]


def mean_final(runs: Sequence[dict[str, Any]], method: str) -> dict[str, float]:
    """The mean over seeds of every figure of ``method``'s end-of-budget final evaluation."""
    finals = [r["final_end"] for r in runs if r["method"] == method and "final_end" in r]
    names = [k for k, v in finals[0].items() if isinstance(v, float)] if finals else []
    return {k: statistics.fmean(f[k] for f in finals) for k in names}


def final_markdown(runs: Sequence[dict[str, Any]]) -> str:
    """With ``--final-samples N``: greedy, the share of greedy completions with a marked answer
    (``greedy_format``), mean@N, pass@k and maj@k at k = 1 and N for the start weights and each
    method's end of budget (mean over seeds); empty without a final evaluation."""
    start = next((r["final_start"] for r in runs if "final_start" in r), None)
    if start is None:
        return ""
    n = start["num_samples"]
    columns = _final_columns(n)
    if "greedy_format" in start:  # runs recorded before the format rate existed lack it
        columns.insert(1, "greedy_format")
    lines = [
        f"Final evaluation: greedy, and {n} samples per held-out problem (temperature as in training); "
        "pass@k unbiased, maj@k the exact mean over k-subsets of the samples; mean over seeds.",
        "",
        "| weights | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        "| start | " + " | ".join(f"{start[c]:.3f}" for c in columns) + " |",
    ]
    for method in dict.fromkeys(r["method"] for r in runs):
        figures = mean_final(runs, method)
        if figures:
            lines.append(
                f"| {LABELS.get(method, method)} | " + " | ".join(f"{figures[c]:.3f}" for c in columns) + " |"
            )
    return "\n".join(lines) + "\n"


def plot_finals(runs: Sequence[dict[str, Any]], path: str) -> bool:
    """pass@k and maj@k against k for the start weights and each method's end of budget (mean over
    seeds) to a PNG; False (nothing written) without a final evaluation."""
    from grpo_lightning.evaluation.model_eval import plot_k_curves

    start = next((r["final_start"] for r in runs if "final_start" in r), None)
    if start is None:
        return False
    curves = {"start": {k: v for k, v in start.items() if isinstance(v, float)}}
    for method in dict.fromkeys(r["method"] for r in runs):
        curves[LABELS.get(method, method)] = mean_final(runs, method)
    plot_k_curves(
        curves, path, title=f"Held-out pass@k and maj@k, {start['num_samples']} samples per problem"
    )
    return True


def write_report(
    summary: dict[str, dict[str, Any]], runs: Sequence[dict[str, Any]], meta: dict[str, Any], out: str
) -> str:
    """Write ``table.md``, ``accuracy_vs_time.png`` and (with a final evaluation) ``k_curves.png``
    into ``out``; returns the table."""
    import os

    table = table_markdown(summary, runs, meta)
    finals = final_markdown(runs)
    table += f"\n{finals}" if finals else ""
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    plot(summary, runs, meta, os.path.join(out, "accuracy_vs_time.png"))
    plot_finals(runs, os.path.join(out, "k_curves.png"))
    return table
