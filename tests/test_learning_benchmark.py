"""The learning comparison (benchmarks/learning): its clock and snapshots, its statistics, and the
whole command end to end in a shortened form."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import one_thread, tiny_model, tiny_tokenizer  # noqa: F401 (autouse fixture)

from grpo_lightning.recipes.tiny_math_sft import sft_batch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks" / "learning"))

import budget  # noqa: E402
import combine  # noqa: E402
import compare  # noqa: E402
import sft_methods  # noqa: E402
from learning_report import summarize, table_markdown  # noqa: E402
from sft_methods import Optimizer, SFTSettings, answer_pairs, epochs  # noqa: E402

CONFIG = str(ROOT / "configs" / "quickstart.yaml")


class FakeTime:
    """Stands in for the ``time`` module: the test moves the clocks by hand."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 7.0

    def perf_counter(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.cpu

    def advance(self, seconds: float, cpu: float | None = None) -> None:
        self.wall += seconds
        self.cpu += seconds if cpu is None else cpu


def test_marks_are_evenly_spaced_from_zero_to_the_budget():
    assert budget.marks_for(240, 8) == [0, 30, 60, 90, 120, 150, 180, 210, 240]
    assert budget.marks_for(2, 1) == [0, 2]
    with pytest.raises(ValueError, match="budget"):
        budget.marks_for(0, 4)
    with pytest.raises(ValueError, match="num_marks"):
        budget.marks_for(10, 0)


def test_clock_snapshots_each_mark_once_excludes_copy_time_and_stops_at_the_budget(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(budget, "time", fake)
    real_copy = budget.weights_copy

    def slow_copy(model):  # a copy that takes 5 s: not training time
        fake.advance(5.0)
        return real_copy(model)

    monkeypatch.setattr(budget, "weights_copy", slow_copy)
    model = torch.nn.Linear(1, 1, bias=False)
    clock = budget.BudgetClock(model, budget=60, num_marks=3)  # marks 0, 20, 40, 60
    with torch.no_grad():
        model.weight.fill_(1.0)
    clock.start()
    assert [s.mark for s in clock.snapshots] == [0]
    fake.advance(15.0, cpu=30.0)
    assert clock.tick(steps=1, samples=8) is False
    assert len(clock.snapshots) == 1  # 15 s < 20 s: no new mark
    with torch.no_grad():
        model.weight.fill_(2.0)
    fake.advance(30.0, cpu=60.0)  # 45 s of training: marks 20 and 40 passed in one unit
    assert clock.tick(steps=2, samples=16) is False
    assert [s.mark for s in clock.snapshots] == [0, 20, 40]
    assert [s.time for s in clock.snapshots[1:]] == [45.0, 45.0]  # the 5 s copy at t=0 is not counted
    assert clock.snapshots[2].cpu == 90.0
    assert (clock.snapshots[1].steps, clock.snapshots[1].samples) == (2, 16)
    with torch.no_grad():
        model.weight.fill_(3.0)  # the snapshots are copies, not views of the live weights
    assert clock.snapshots[0].state["weight"].item() == 1.0
    assert clock.snapshots[1].state["weight"].item() == 2.0
    fake.advance(16.0)
    assert clock.tick(steps=3, samples=24) is True
    assert clock.done and [s.mark for s in clock.snapshots] == [0, 20, 40, 60]
    assert clock.snapshots[-1].time == 61.0


def test_cpu_clock_counts_process_cpu_seconds(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(budget, "time", fake)
    clock = budget.BudgetClock(torch.nn.Linear(1, 1), budget=10, num_marks=1, clock="cpu")
    clock.start()
    fake.advance(20.0, cpu=4.0)  # 20 s of wall-clock but 4 s of CPU: budget not spent
    assert clock.tick(1, 1) is False
    fake.advance(1.0, cpu=6.0)
    assert clock.tick(2, 2) is True
    assert (clock.snapshots[-1].time, clock.snapshots[-1].wall) == (10.0, 21.0)
    with pytest.raises(ValueError, match="clock"):
        budget.BudgetClock(torch.nn.Linear(1, 1), budget=10, num_marks=1, clock="gpu")


def _run(method, seed, accuracies):
    snapshots = [{"mark": 10.0 * i, "time": 10.0 * i + seed, "accuracy": a} for i, a in enumerate(accuracies)]
    return {
        "method": method,
        "seed": seed,
        "snapshots": snapshots,
        "steps": 10 * (seed + 1),
        "samples": 5,
        "budget": 20.0,
        "clock": "wall",
        "threads": 2,
        "held_out_size": 200,
        "loadavg_start": [1.5 + seed, 0, 0],
        "loadavg_end": [2.0, 0, 0],
    }


def test_summary_mean_spread_and_per_seed_values_by_hand():
    runs = [
        _run("grpo", 0, [0.5, 0.6, 0.7]),
        _run("rft", 0, [0.5, 0.5, 0.4]),
        _run("grpo", 1, [0.5, 0.8, 0.9]),
    ]
    s = summarize(runs)
    assert list(s) == ["grpo", "rft"]
    g = s["grpo"]
    assert g["seeds"] == [0, 1] and g["marks"] == [0.0, 10.0, 20.0]
    assert g["mean"] == pytest.approx([0.5, 0.7, 0.8])
    assert g["min"] == [0.5, 0.6, 0.7] and g["max"] == [0.5, 0.8, 0.9]
    assert g["start"] == [0.5, 0.5] and g["end"] == [0.7, 0.9]
    assert g["end_std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.7 and 0.9: sqrt(2 * 0.1^2 / 1)
    assert s["rft"]["end_std"] is None  # one seed: no spread
    assert g["end_time"] == [20.0, 21.0]
    assert g["time_mean"] == [0.5, 10.5, 20.5]
    table = table_markdown(s, runs, {"cpu_count": 2})
    assert "after 20 s of training (wall-clock time, 2 threads per run), 1-2 seeds per method;" in table
    assert "load average 1.5-2.5 on 2 cores" in table
    assert (
        "| GRPO (answers only) | 0.500 | **0.800** | 0.141 | 0.700-0.900 | +0.300 | 0: 0.700, 1: 0.900 | 15 | 20.5 |"
        in table
    )
    assert (
        "| RFT (rejection sampling) | 0.500 | **0.400** | - | 0.400-0.400 | -0.100 | 0: 0.400 | 10 | 20.0 |"
        in table
    )
    with pytest.raises(ValueError, match="marks"):
        summarize([*runs, {**_run("rft", 1, [0.5, 0.5]), "snapshots": [{"mark": 0.0, "accuracy": 0.5}]}])


def test_combine_keeps_a_tagged_sweep_apart_from_the_default_run(tmp_path):
    for name, accuracies in (("base", [0.2, 0.5, 0.6]), ("sweep", [0.2, 0.3, 0.9])):
        folder = tmp_path / name
        folder.mkdir()
        runs = [_run("rft", seed, accuracies) for seed in (0, 1)]
        (folder / "results.json").write_text(json.dumps({"runs": runs, "meta": {"cpu_count": 2}}))
    combine.main([str(tmp_path / "base"), f"{tmp_path / 'sweep'}:lr 3e-4", "--out", str(tmp_path / "all")])
    table = (tmp_path / "all" / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| RFT")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| RFT (rejection sampling)",
        "| RFT (rejection sampling), lr 3e-4",
    ]
    assert "**0.600**" in rows[0] and "**0.900**" in rows[1]  # each curve keeps its own runs
    assert (tmp_path / "all" / "accuracy_vs_time.png").stat().st_size > 0


def test_combine_tags_one_method_and_merges_more_seeds_of_another(tmp_path):
    folders = {
        "first": [_run("grpo", 0, [0.2, 0.5]), _run("rft", 0, [0.2, 0.6]), _run("rft", 1, [0.2, 0.8])],
        "more": [_run("rft", 2, [0.2, 0.7]), _run("grpo", 2, [0.2, 0.9])],
    }
    for name, runs in folders.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"runs": runs, "meta": {"cpu_count": 2}}))
    combine.main([f"{tmp_path / 'first'}:grpo=beta 0.01", str(tmp_path / "more"), "--out", str(tmp_path / "all")])
    table = (tmp_path / "all" / "table.md").read_text()
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert "| GRPO (answers only), beta 0.01" in rows and "| GRPO (answers only)" in rows
    assert "**0.500**" in rows["| GRPO (answers only), beta 0.01"]
    assert "**0.900**" in rows["| GRPO (answers only)"]
    assert "**0.700**" in rows["| RFT (rejection sampling)"] and "0: 0.600, 1: 0.800, 2: 0.700" in table
    assert "1-3 seeds per method" in table
    with pytest.raises(ValueError, match="no runs of 'sft'"):
        combine.main([f"{tmp_path / 'first'}:sft=x", "--out", str(tmp_path / "bad")])


def test_run_order_rotates_the_methods_for_each_seed():
    assert compare.run_order(["a", "b", "c"], [0, 1, 2, 3]) == [
        ("a", 0), ("b", 0), ("c", 0),
        ("b", 1), ("c", 1), ("a", 1),
        ("c", 2), ("a", 2), ("b", 2),
        ("a", 3), ("b", 3), ("c", 3),
    ]  # fmt: skip


def test_run_settings_reach_the_worker_unchanged():
    parser = argparse.ArgumentParser()
    compare.add_run_arguments(parser)
    given = ["--config", "c.yaml", "--set", "data.batch_size=4", "--set", "model.beta=0", "--budget", "3.5"]
    given += ["--worked-data", '{"max_steps": 4}', "--rft-chunk", "12", "--clock", "cpu"]
    for switch in ([], ["--rft-keep-duplicates"]):
        args = parser.parse_args(given + switch)
        assert args.rft_keep_duplicates == bool(switch)
        assert parser.parse_args(compare.forwarded(args)) == args


def test_answers_only_targets_and_epoch_order():
    task = SimpleNamespace(
        train={"prompt": ["Q: What is 1 + 2?\nA: ", "Q: What is 9 - 4?\nA: "], "answer": ["3", "5"]}
    )
    assert answer_pairs(task) == [("Q: What is 1 + 2?\nA: ", "#### 3"), ("Q: What is 9 - 4?\nA: ", "#### 5")]
    import random

    stream = epochs(3, random.Random(0))
    first, second = [next(stream) for _ in range(3)], [next(stream) for _ in range(3)]
    assert sorted(first) == sorted(second) == [0, 1, 2]  # every example once per epoch
    with pytest.raises(ValueError, match="empty"):
        next(epochs(0, random.Random(0)))


def test_rft_keeps_the_correct_completions_that_ended():
    # 2 problems x 3 samples: correct = reward says so; truncated ones (no EOS) are not kept.
    prompts = ["P1"] * 3 + ["P2"] * 3
    completions = ["a #### 3", "b #### 4", "c #### 3", "d #### 5", "e #### 5", "f #### 5"]
    is_correct = torch.tensor([True, False, True, True, True, False])
    truncated = torch.tensor([False, False, True, False, False, False])
    scored = SimpleNamespace(
        prompts=prompts, completions=completions, rollout=SimpleNamespace(truncated=truncated)
    )
    seen = {}

    def fake_sample(batch, seed, *, num_generations, sampling, scorer):
        seen.update(batch=batch, n=num_generations, sampling=sampling, seed=seed, scorer=scorer)
        return scored

    sampler = SimpleNamespace(sample=fake_sample)
    evaluator = SimpleNamespace(correct=lambda s: is_correct)
    module = SimpleNamespace(
        sampling="config sampling", accuracy_scorer="accuracy reward", sampler=sampler, evaluator=evaluator
    )
    task = SimpleNamespace(module=module, datamodule=SimpleNamespace(collator=lambda rows: {"rows": rows}))
    kept = sft_methods.sample_correct(task, [{"q": 1}, {"q": 2}], generations=3, seed=7)
    assert kept == [("P1", "a #### 3"), ("P2", "d #### 5"), ("P2", "e #### 5")]
    twice = [*kept, ("P2", "d #### 5")]
    assert sft_methods.round_pool(twice, distinct=True) == kept
    assert sft_methods.round_pool(twice, distinct=False) == twice
    assert seen == {
        "batch": {"rows": [{"q": 1}, {"q": 2}]},
        "n": 3,
        "sampling": "config sampling",
        "seed": 7,
        "scorer": "accuracy reward",
    }


def test_sft_learning_rate_warms_up_linearly_then_stays_constant():
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    optimizer = Optimizer(model, SFTSettings(lr=1e-3, warmup=4))
    batch = sft_batch(tokenizer, [{"question": "1+1=", "solution": "2"}], template="{question}")
    before = model.lm_head.weight.detach().clone()
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.adamw.param_groups[0]["lr"])
        optimizer.step(batch)
    assert lrs == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3])
    assert not torch.equal(before, model.lm_head.weight)
    assert all(p.grad is None for p in model.parameters())  # cleared after each step
    constant = Optimizer(model, SFTSettings(lr=1e-3))
    assert constant.adamw.param_groups[0]["lr"] == 1e-3


@pytest.mark.slow
def test_comparison_end_to_end_shortened(tmp_path):
    out = tmp_path / "learning"
    tiny = ["data.max_val_samples=10", "data.batch_size=4", "model.num_generations=4"]
    args = (
        [
            "--config",
            CONFIG,
            "--budget",
            "2",
            "--marks",
            "2",
            "--seeds",
            "0",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
        + [a for s in tiny for a in ("--set", s)]
        + ["--sft-batch-size", "8", "--worked-pool", "300", "--rft-chunk", "8", "--rft-generations", "2"]
        + ["--rft-prompts-per-call", "4", "--final-samples", "2"]
    )
    compare.main(args)
    results = json.loads((out / "results.json").read_text())
    runs = {r["method"]: r for r in results["runs"]}
    assert sorted(runs) == sorted(compare.METHODS)
    for method, run in runs.items():
        assert [s["mark"] for s in run["snapshots"]] == [0.0, 1.0, 2.0], method
        assert all(s["time"] >= s["mark"] for s in run["snapshots"])
        assert all(0.0 <= s["accuracy"] <= 1.0 for s in run["snapshots"])
        assert run["held_out_size"] == 10
        assert run["steps"] >= 1 and run["train_wall"] >= 2.0
        assert (out / "runs" / f"{method}-seed0.json").is_file() and (
            out / "logs" / f"{method}-seed0.log"
        ).is_file()
        final = run["final_end"]
        assert final["pass@2"] >= final["mean@2"] and len(final["problems"]) == 10
        # The final evaluation's greedy pass sees the same weights and problems as the last snapshot's.
        assert final["greedy"] == run["snapshots"][-1]["accuracy"]
        # A right answer is a marked one: the format rate bounds the accuracy, and counts the marks.
        assert final["greedy"] <= final["greedy_format"] <= 1.0
        texts = [p["greedy_completion"] for p in final["problems"]]
        marked = ["####" in t or "\\boxed{" in t for t in texts]
        assert all(m for m, p in zip(marked, final["problems"], strict=True) if p["greedy_correct"])
        assert final["greedy_format"] <= sum(marked) / len(marked)
    # Same start checkpoint, same held-out problems: the same start accuracy for every method.
    starts = {run["snapshots"][0]["accuracy"] for run in runs.values()}
    assert len(starts) == 1
    assert sum("final_start" in r for r in runs.values()) == 1  # the start weights are final-evaluated once
    assert next(r for r in runs.values() if "final_start" in r)["final_start"]["greedy"] == starts.pop()
    table = (out / "table.md").read_text()
    assert "| weights | greedy | greedy_format |" in table
    for label in ("GRPO", "SFT, worked solutions", "SFT, answers only", "RFT"):
        assert f"| {label}" in table
    assert (out / "accuracy_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A comparison stopped before its last run is reported from the records of the runs that finished.
    (out / "runs" / "rft-seed0.json").unlink()
    reported = compare.main([*args, "--report-only"])
    assert reported["runs"] == [r for r in results["runs"] if r["method"] != "rft"]
    table = (out / "table.md").read_text()
    assert "| GRPO" in table and "| RFT" not in table
