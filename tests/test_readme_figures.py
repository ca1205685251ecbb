"""Figures the README quotes next to a committed output in ``benchmarks/results/`` match that output.

A figure is checked at the precision the README prints it with: "0.61" quotes 0.6050 to 0.6150.
When a benchmark is re-run and its output committed, these tests name each README figure to update.
"""

from __future__ import annotations

import csv
import json
import re

import pytest
from helpers import one_thread  # noqa: F401 (autouse fixture)
from test_readme import README, ROOT, readme_examples, readme_section

RESULTS = ROOT / "benchmarks" / "results"


def quotes(printed: str, value: float) -> bool:
    """Whether the README's ``printed`` number is ``value`` rounded to the digits it shows."""
    digits = len(printed.split(".", 1)[1]) if "." in printed else 0
    return abs(float(printed.replace(",", "")) - value) <= 0.5 * 10**-digits + 1e-9


def assert_quotes(what: str, printed: str, value: float) -> None:
    assert quotes(printed, value), f"README: {what} is {printed}, the committed output says {value}"


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of every table row in ``text`` (header and separator rows included)."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]


def prose(pattern: str, text: str) -> re.Match[str]:
    """``pattern`` in the README's prose, each space matching any whitespace (the text is wrapped)."""
    found = re.search(pattern.replace(" ", r"\s+"), text, re.DOTALL)
    assert found is not None, f"the README no longer says {pattern!r}: update the figure's test with it"
    return found


def number(cell: str) -> str:
    return cell.strip("*x ")


def test_quotes_reads_the_precision_the_readme_prints():
    assert quotes("0.61", 0.6149) and quotes("0.61", 0.605) and not quotes("0.61", 0.6151)
    assert quotes("584", 584.25) and not quotes("584", 585.0) and quotes("2,388,992", 2388992)
    assert not quotes("0.46", 0.4838)


def test_every_results_path_the_docs_name_exists():
    docs = {README: "benchmarks/results/", ROOT / "benchmarks" / "README.md": "results/"}
    docs.update({path: "benchmarks/results/" for path in (ROOT / "docs").glob("*.md")})
    named = 0
    for doc, prefix in docs.items():
        for path in re.findall(rf"(?<![\w/.-]){re.escape(prefix)}[\w./-]*[\w/]", doc.read_text()):
            named += 1
            assert (RESULTS / path[len(prefix) :]).exists(), (
                f"{doc.name} names {path}, which is not committed"
            )
    assert named >= 20


# The learning comparison: the README's table against benchmarks/results/learning-300-all/table.md.
LEARNING_METHODS = {  # the README's label starts with ... : the row of table.md
    "start": "start",
    "**GRPO**, answers only": "GRPO (answers only)",
    "GRPO with beta 0.01": "GRPO (answers only), beta 0.01",
    "RFT:": "RFT (rejection sampling)",
    "SFT on answers-only": "SFT, answers only",
    "SFT on the worked solutions": "SFT, worked solutions",
}


def learning_tables() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """table.md's two tables by method: the end-of-budget one and the final evaluation."""
    budget_text, final_text = (
        (RESULTS / "learning-300-all" / "table.md").read_text().split("Final evaluation", 1)
    )
    budget = {row[0]: row for row in markdown_rows(budget_text)}
    final = {row[0]: row for row in markdown_rows(final_text)}
    return budget, final


def test_the_learning_table_quotes_its_committed_output():
    budget, final = learning_tables()
    rows = [
        row
        for row in markdown_rows(
            readme_section("## What learning from rewards adds over supervised fine-tuning")
        )
        if not row[0].startswith(("method", "---"))
    ]
    assert len(rows) == len(LEARNING_METHODS)
    for row in rows:
        label = next(LEARNING_METHODS[start] for start in LEARNING_METHODS if row[0].startswith(start))
        greedy, mean8, pass8, maj8 = (float(final[label][i]) for i in (1, 2, 4, 6))
        assert_quotes(f"{label} greedy", number(row[1]), greedy)
        assert_quotes(f"{label} mean@8", row[5], mean8)
        assert_quotes(f"{label} maj@8", row[6], maj8)
        assert_quotes(f"{label} pass@8", row[7], pass8)
        if label == "start":
            continue
        _, _, mean, std, spread, _, per_seed, *_ = budget[label]
        assert_quotes(f"{label} mean", number(row[1]), float(number(mean)))
        assert (row[2], row[3]) == (std, spread), label
        assert row[4].split(", ") == [seed.split(": ")[1] for seed in per_seed.split(", ")], label


def test_the_learning_prose_quotes_the_optimizer_steps():
    budget, _ = learning_tables()
    text = readme_section("## What learning from rewards adds over supervised fine-tuning")
    beta = prose(r"makes (\d+) optimizer steps in the budget", text).group(1)
    skip = prose(r"skip the backward pass.*?\): (\d+) steps", text).group(1)
    intro = prose(r"quickstart makes (\d+) optimizer steps in it", text).group(1)
    assert beta == budget["GRPO (answers only), beta 0.01"][7]
    assert skip == intro == budget["GRPO (answers only)"][7]


def test_the_learning_prose_quotes_differences_of_the_table():
    budget, final = learning_tables()
    grpo, rft, start = "GRPO (answers only)", "RFT (rejection sampling)", "start"
    text = readme_section("## What learning from rewards adds over supervised fine-tuning")
    seeds = [[float(seed.split(": ")[1]) for seed in budget[m][6].split(", ")] for m in (grpo, rft)]
    ahead = prose(r"GRPO is higher on (\d) of (\d) seeds", text).groups()
    assert ahead == (str(sum(g > r for g, r in zip(*seeds, strict=True))), str(len(seeds[0])))
    points = prose(r"by ([\d.]+) points on average \(mean@8 \+([\d.]+), maj@8 \+([\d.]+)\)", text).groups()
    for printed, column in zip(points, (1, 2, 6), strict=True):
        assert_quotes(
            f"GRPO - RFT, column {column}",
            printed,
            100 * (float(final[grpo][column]) - float(final[rft][column])),
        )
    gains = prose(r"GRPO raises maj@8 \(\+([\d.]+)\) far more than pass@8 \(\+([\d.]+)\)", text).groups()
    for printed, column in zip(gains, (6, 4), strict=True):
        assert_quotes(
            f"GRPO's gain, column {column}", printed, float(final[grpo][column]) - float(final[start][column])
        )


# The quickstart: its table and timing against benchmarks/results/quickstart-seed0/.
def test_the_quickstart_table_quotes_its_metrics_csv():
    rows = markdown_rows(readme_section("## Quickstart (CPU)"))
    steps = next(row for row in rows if row[0] == "optimizer step")[1:]
    quoted = next(row for row in rows if row[0].startswith("`val/accuracy`, seed 0"))[1:]
    with (RESULTS / "quickstart-seed0" / "metrics.csv").open() as f:
        measured = {int(r["step"]): float(r["val/accuracy"]) for r in csv.DictReader(f) if r["val/accuracy"]}
    assert [int(s) for s in steps] == sorted(measured)
    for step, printed in zip(steps, quoted, strict=True):
        assert_quotes(f"quickstart val/accuracy at step {step}", printed, measured[int(step)])


def test_the_quickstart_timing_quotes_its_log():
    text = readme_section("## Quickstart (CPU)")
    log = (RESULTS / "quickstart-seed0" / "fit.log").read_text()
    minutes, seconds = re.search(
        r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\d+):(\d+)", log
    ).groups()
    wall = prose(
        r"took (\d+) min (\d+) s of wall time \((\d+) s user \+ (\d+) s system CPU, peak memory ([\d.]+) GB",
        text,
    )
    assert wall.group(1, 2) == (minutes, seconds)
    assert_quotes(
        "user CPU s", wall.group(3), float(re.search(r"User time \(seconds\): ([\d.]+)", log).group(1))
    )
    assert_quotes(
        "system CPU s", wall.group(4), float(re.search(r"System time \(seconds\): ([\d.]+)", log).group(1))
    )
    peak_kb = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", log).group(1))
    assert_quotes("peak memory GB", wall.group(5), peak_kb / 1e6)


# Speed: the TRL comparison table against the final --workload all run in cpu-2core-torch2.13.txt.
SPEED_WORKLOADS = {"3M parameters": "3m", "23M parameters": "23m", "Qwen2.5-0.5B shape": "real-vocab"}


CASE_FIGURES = ("trl", "ours", "speedup", "trl_floor", "ours_floor", "trl_rss", "ours_rss", "memory")


# A system's row of a bench_vs_trl case: s/step, cpu s, (steps/s, tok/s), RSS MB, x floor.
SYSTEM_ROW = r"\s+([\d.]+)\s+([\d.]+)\s+[\d.]+\s+\d+\s+(\d+)\s+([\d.]+)"


def system_figures(block: str, system: str) -> dict[str, float]:
    """``system``'s (``trl``, ``grpo_lightning[default]``) figures in one case of a bench_vs_trl output."""
    found = re.search("^" + re.escape(system) + SYSTEM_ROW, block, re.MULTILINE)
    return dict(zip(("step", "cpu", "rss", "floor"), map(float, found.groups()), strict=True))


def ratio_figures(block: str) -> dict[str, float]:
    """The case's summary: speed-up (median of per-pair ratios), by CPU time, and the peak RSS ratio."""
    found = re.search(r"vs trl: ([\d.]+)x faster .*by CPU time ([\d.]+)x.*peak RSS ([\d.]+)x of TRL's", block)
    return dict(zip(("speedup", "cpu_speedup", "memory"), map(float, found.groups()), strict=True))


def speed_rows(workloads: dict[str, str], cells: int) -> list[list[str]]:
    """The rows of the README's Speed tables with ``cells`` cells whose model starts as a key of ``workloads``."""
    rows = markdown_rows(readme_section("## Speed"))
    return [row for row in rows if row[0].startswith(tuple(workloads)) and len(row) == cells]


def trl_comparison() -> dict[tuple[str, str, str], dict[str, float]]:
    """Each case of the run the docs quote, by (workload, beta, mu): both systems' s/step, x floor and
    peak RSS (MB), the speed-up (median of per-pair ratios) and grpo_lightning's peak RSS over TRL's."""
    raw = (RESULTS / "cpu-2core-torch2.13.txt").read_text()
    run = raw.split("# Final code. python benchmarks/bench_vs_trl.py --workload all\n", 1)[1]
    cases = {}
    for block in run.split("\n# ", 1)[0].split("=== ")[1:]:
        case = re.match(r"(\S+) beta=(\S+) mu=(\d+):", block).groups()
        trl, ours = system_figures(block, "trl"), system_figures(block, "grpo_lightning[default]")
        ratio = ratio_figures(block)
        values = (trl["step"], ours["step"], ratio["speedup"], trl["floor"], ours["floor"], trl["rss"], ours["rss"])
        cases[case] = dict(zip(CASE_FIGURES, (*values, ratio["memory"]), strict=True))
    return cases


def test_the_speed_table_quotes_the_committed_trl_comparison():
    cases = trl_comparison()
    rows = speed_rows(SPEED_WORKLOADS, 6)
    assert len(rows) == 3 and len(cases) == 10
    for row in rows:
        workload = next(SPEED_WORKLOADS[start] for start in SPEED_WORKLOADS if row[0].startswith(start))
        of_workload = [figures for case, figures in cases.items() if case[0] == workload]
        for cell, key in zip(row[1:], ("trl", "ours", "speedup", "memory", "ours_floor"), strict=True):
            low, high = number(cell).split("-")
            assert_quotes(f"{workload} {key} low", low, min(figures[key] for figures in of_workload))
            assert_quotes(f"{workload} {key} high", high, max(figures[key] for figures in of_workload))


def test_the_benchmarks_results_table_quotes_the_committed_trl_comparison():
    cases = trl_comparison()
    text = (ROOT / "benchmarks" / "README.md").read_text().split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    rows = [row for row in markdown_rows(text) if tuple(row[:3]) in cases]
    assert len(rows) == len(cases)
    for row in rows:
        figures = cases[row[0], row[1], row[2]]
        trl_rss, ours_rss = row[8].removesuffix(" MB").split(" / ")
        printed = (row[3], row[4], number(row[5]), row[6], row[7], trl_rss, ours_rss, row[9])
        for key, cell in zip(CASE_FIGURES, printed, strict=True):
            assert_quotes(f"{row[:3]} {key}", cell, figures[key])


def test_the_idle_row_skip_quotes_its_output():
    raw = (RESULTS / "idle-rows-cpu-1thread.txt").read_text()
    text = readme_section("## Speed")
    quoted = prose(
        r"(\d+)% of the rows had advantage 0, a training step took ([\d.]+) CPU seconds against "
        r"([\d.]+) without the skip \(([\d.]+)x\)",
        text,
    )
    assert_quotes("idle rows %", quoted.group(1), float(re.search(r"advantage 0: ([\d.]+)%", raw).group(1)))
    assert_quotes(
        "with the skip",
        quoted.group(2),
        float(re.search(r"^\| skipped.*?\| ([\d.]+) \|", raw, re.MULTILINE).group(1)),
    )
    assert_quotes(
        "without",
        quoted.group(3),
        float(re.search(r"^\| run as for.*?\| ([\d.]+) \|", raw, re.MULTILINE).group(1)),
    )
    assert_quotes(
        "speed-up", quoted.group(4), float(re.search(r"median of pairs\): ([\d.]+)x", raw).group(1))
    )


def test_the_adamw_and_thread_figures_quote_their_outputs():
    text = readme_section("## Speed")
    adamw = re.search(
        r"tiny-math:.*?fused\s+[\d.]+ ms/step\s+([\d.]+)x",
        (RESULTS / "adamw-cpu-2core.txt").read_text(),
        re.DOTALL,
    )
    assert_quotes(
        "fused AdamW speed-up",
        prose(r"([\d.]+)x faster per optimizer step", text).group(1),
        float(adamw.group(1)),
    )
    threads = (RESULTS / "threads-cpu-2core.txt").read_text().split("# Second run", 1)[0]
    after = re.search(r"^\.\s+CPU s/step idle ([\d.]+), busy ([\d.]+)", threads, re.MULTILINE).groups()
    before = re.search(r"^before\s+CPU s/step idle ([\d.]+), busy ([\d.]+)", threads, re.MULTILINE).groups()
    quoted = prose(
        r"took ([\d.]+) CPU seconds per step with it against ([\d.]+) without, and beside 2 extra busy processes "
        r"([\d.]+) against ([\d.]+)",
        text,
    )
    measured = (after[0], before[0], after[1], before[1])
    for what, printed, value in zip(
        ("idle, after", "idle, before", "busy, after", "busy, before"), quoted.groups(), measured, strict=True
    ):
        assert_quotes(f"CPU s/step {what}", printed, float(value))


# The README's own examples, measured by benchmarks/readme_examples.py.
def committed(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def test_the_python_example_quotes_its_committed_run():
    run = committed("readme-python-example.json")
    assert run["result"]["code"] == readme_examples.readme_code("## From Python or a notebook"), (
        "the README's Python example changed since its figures were measured: re-run " + run["command"]
    )
    text = readme_section("## From Python or a notebook")
    quoted = prose(r"It prints `([^`]*)` \(([\d.]+) s of CPU time", text)
    assert quoted.group(1) == run["result"]["printed"]
    assert_quotes("CPU s", quoted.group(2), run["result"]["cpu_s"])


def test_the_evaluate_model_example_quotes_its_committed_run():
    run = committed("readme-evaluate-model.json")
    assert run["result"]["code"] == "".join(readme_examples.evaluate_model_code()), (
        "the README's evaluate_model example changed since its figures were measured: re-run "
        + run["command"]
    )
    quoted = prose(
        r"greedy ([\d.]+), mean@8 ([\d.]+), pass@8 ([\d.]+), maj@8 ([\d.]+), in ([\d.]+) s of CPU",
        readme_section("## Evaluation"),
    )
    figures = run["result"]["figures"]
    for printed, key in zip(quoted.groups()[:4], ("accuracy", "mean@8", "pass@8", "maj@8"), strict=True):
        assert_quotes(key, printed, figures[key])
    assert_quotes("CPU s", quoted.group(5), run["result"]["cpu_s"])


def test_the_k_curves_figures_quote_their_committed_run():
    run = committed("k-curves-tiny-math.json")
    before, after = run["before"], run["after 60 GRPO steps"]
    text = readme_section("## Evaluation")
    for key in ("maj@8", "pass@8", "mean@8"):
        quoted = prose(rf"{key} (?:from )?([\d.]+) to ([\d.]+)", text)
        low, high = quoted.groups()
        assert_quotes(f"{key} before", low, before[key])
        assert_quotes(f"{key} after", high, after[key])
    training = re.search(r"training ([\d.]+) s", (RESULTS / "k-curves-tiny-math.txt").read_text()).group(1)
    assert_quotes(
        "training CPU s", prose(r"problems, ([\d.]+) s of CPU, one seed", text).group(1), float(training)
    )


def test_the_tiny_model_size_quotes_its_committed_output():
    run = committed("readme-tiny-math.json")["result"]
    quoted = prose(
        r"a ([\d.]+)M-parameter character-level Qwen2 model that ships inside the package \(([\d.]+) MB;",
        readme_section("## Quickstart (CPU)"),
    )
    assert_quotes("parameters (M)", quoted.group(1), run["parameters"] / 1e6)
    assert_quotes("folder MB", quoted.group(2), run["folder_bytes"] / 1e6)


def test_the_tiny_model_output_is_current():
    """What the committed output records of the shipped model is what the command finds now."""
    assert readme_examples.run_tiny_math() == committed("readme-tiny-math.json")["result"]


@pytest.mark.slow
def test_the_evaluate_model_figures_are_reproduced():
    """The command next to the figures gives them again (one thread, as they were measured)."""
    assert (
        readme_examples.run_evaluate_model()["figures"]
        == committed("readme-evaluate-model.json")["result"]["figures"]
    )


def test_the_real_model_recipe_table_quotes_its_committed_run():
    budget, final = (RESULTS / "smollm2-arithmetic" / "table.md").read_text().split("Final evaluation")
    seeds = {row[0]: row for row in markdown_rows(budget)}["GRPO (answers only)"][6]  # "0: 0.410, 1: ..."
    rows = {row[0]: row for row in markdown_rows(final)}  # weights | greedy | format | mean@4 | pass@1 | pass@4 | ...
    start, end = rows["start"], rows["GRPO (answers only)"]
    section = readme_section("## Second step: a real pretrained model on the CPU")
    readme = {row[0]: row for row in markdown_rows(section)}
    greedy = readme["greedy accuracy"]
    assert_quotes("start greedy accuracy", greedy[1], float(start[1]))
    assert_quotes("end greedy accuracy", re.findall(r"[0-9.]+", greedy[2])[0], float(end[1]))
    assert re.findall(r"0\.\d+", greedy[2])[1:] == re.findall(r"\d: ([0-9.]+)", seeds)  # the seeds, in order
    fmt = readme["greedy answers in the `####` format"]
    assert_quotes("start format", fmt[1], float(start[2]))
    assert_quotes("end format", fmt[2], float(end[2]))
    k_figures = readme["mean@4 / pass@4 / maj@4 (temperature 0.7)"]
    for cell, row in ((k_figures[1], start), (k_figures[2], end)):
        for value, index in zip(cell.split(" / "), (3, 5, 7), strict=True):  # mean@4, pass@4, maj@4
            assert_quotes("mean@4 / pass@4 / maj@4", value, float(row[index]))


def test_the_real_model_memory_figures_quote_their_committed_run():
    # The last run in the file is the code now; its raw lines are JSON, one per variant.
    out = (RESULTS / "memory-smollm2-cpu-1thread.txt").read_text()
    runs = [json.loads(line) for line in out.rsplit("# raw\n", 1)[1].splitlines() if line.startswith("{")]
    by_variant = {run["variant"]: run for run in runs}
    said = prose(
        r"peaks at ([\d.]+) GB resident: ([\d.]+) GB of weights, gradients and AdamW state, ([\d.]+) GB of "
        r"Python and libraries, and one row's activations \(([\d.]+)x the state; ([\d.]+)x with beta 0.04",
        README.read_text(),
    )
    full, beta = by_variant["full"], by_variant["full-beta"]
    assert full["rows_per_backward_pass"] == [1]
    assert_quotes("peak GB", said[1], full["peak_rss_mb"] * 2**20 / 1e9)
    assert_quotes("state GB", said[2], full["floor_mb"] * 2**20 / 1e9)
    assert_quotes("libraries GB", said[3], full["measured_mb"]["libraries"] * 2**20 / 1e9)
    assert_quotes("ratio", said[4], full["peak_rss_mb"] / full["floor_mb"])
    assert_quotes("ratio with beta", said[5], beta["peak_rss_mb"] / beta["floor_mb"])


# Idle and busy: the README's table against the last case of each workload in vs-trl-idle-busy-cpu-2core.txt.
IDLE_BUSY_WORKLOADS = {"3M": "3m", "23M": "23m", "Qwen2.5-0.5B shape": "real-vocab", "SmolLM2": "smollm2"}


def idle_busy_cases() -> dict[tuple[str, bool], dict[str, float]]:
    """By (workload, busy): both systems' s/step, the speed-up and CPU-time speed-up, the RSS ratio,
    grpo_lightning's x floor; the last run of each case in the file wins (later runs supersede)."""
    raw = (RESULTS / "vs-trl-idle-busy-cpu-2core.txt").read_text()
    cases = {}
    for block in raw.split("=== ")[1:]:
        head = block.split(" ===", 1)[0]
        workload, busy = head.split(" ", 1)[0], "beside 2 busy processes" in head
        trl, ours = system_figures(block, "trl"), system_figures(block, "grpo_lightning[default]")
        cases[workload, busy] = {
            "trl": trl["step"],
            "ours": ours["step"],
            **ratio_figures(block),
            "ours_floor": ours["floor"],
            "trl_cpu": trl["cpu"],
            "ours_cpu": ours["cpu"],
        }
    return cases


def test_the_idle_and_busy_table_quotes_the_committed_run():
    cases = idle_busy_cases()
    rows = speed_rows(IDLE_BUSY_WORKLOADS, 7)
    assert len(rows) == len(IDLE_BUSY_WORKLOADS)
    for row in rows:
        workload = next(IDLE_BUSY_WORKLOADS[start] for start in IDLE_BUSY_WORKLOADS if row[0].startswith(start))
        for busy, (times, speedup) in ((False, row[1:3]), (True, row[3:5])):
            if (workload, busy) not in cases:  # not measured: the table must say so
                assert (times, speedup) == ("-", "-"), f"{workload} busy={busy} has no committed run"
                continue
            case = cases[workload, busy]
            trl, ours = times.split(" / ")
            assert_quotes(f"{workload} busy={busy} TRL s/step", trl, case["trl"])
            assert_quotes(f"{workload} busy={busy} s/step", ours, case["ours"])
            fast, cpu = re.fullmatch(r"\**([\d.]+)x\** \(([\d.]+)x\)", speedup).groups()
            assert_quotes(f"{workload} busy={busy} speed-up", fast, case["speedup"])
            assert_quotes(f"{workload} busy={busy} CPU-time speed-up", cpu, case["cpu_speedup"])
        assert_quotes(f"{workload} memory", number(row[5]), cases[workload, False]["memory"])
        assert_quotes(f"{workload} x floor", number(row[6]), cases[workload, False]["ours_floor"])
    said = prose(
        r"3M: ([\d.]+) CPU-s idle, ([\d.]+) busy; 23M: ([\d.]+) and ([\d.]+); the large vocabulary ([\d.]+) and "
        r"([\d.]+)\) where TRL's grows \(([\d.]+) to ([\d.]+); ([\d.]+) to ([\d.]+)\)",
        readme_section("## Speed"),
    )
    ours = [cases[w, busy]["ours_cpu"] for w in ("3m", "23m", "real-vocab") for busy in (False, True)]
    trl = [cases[w, busy]["trl_cpu"] for w in ("3m", "23m") for busy in (False, True)]
    for i, value in enumerate(ours + trl):
        assert_quotes(f"CPU seconds per step, figure {i + 1}", said[i + 1], value)
