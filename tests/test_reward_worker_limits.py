"""Rewards in worker processes stay within bounded time however they misbehave: a reward that hangs
on every input, on some inputs, or crashes every worker; restarts are neither counted against the
next call's time limit nor repeated once per completion; a worker that cannot import a reward says why."""

from __future__ import annotations

import importlib
import math
import os
import sys
import time

import pytest
from faulty_rewards import crashy, sleepy

from grpo_lightning.isolation.pool import WorkerStartError
from grpo_lightning.rewards.scorer import RewardError, RewardScorer


@pytest.fixture
def started():
    """``started(funcs, **kwargs)``: a scorer with reward workers, already started (their start-up is
    not part of what the tests time); closed at the end."""
    made = []

    def make(funcs, workers=1, **kwargs):
        scorer = RewardScorer(funcs, workers=workers, **kwargs)
        made.append(scorer)
        scorer.score(["p"] * workers, ["ok"] * workers)  # one call per worker: each has started
        return scorer

    yield make
    for scorer in made:
        scorer.pool.close()


def timed(fn, *args):
    start = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - start


def test_with_errors_raise_a_reward_that_always_hangs_fails_after_one_time_limit(started):
    scorer = started([sleepy], timeout=1.0)
    start = time.monotonic()
    with pytest.raises(RewardError, match=r"'sleepy' timed out after 1s on completion 0 of 6"):
        scorer.score(["p"] * 6, ["hang"] * 6)
    # Not 6 time limits (one per completion), each followed by a worker restart.
    assert time.monotonic() - start < 2.5
    # The next batch gets a fresh worker.
    assert scorer.score(["p"] * 2, ["a", "b"]).flatten().tolist() == [1.0, 1.0]


def test_with_errors_none_a_reward_that_always_hangs_costs_two_time_limits_not_one_per_completion(started):
    scorer = started([sleepy], timeout=1.0, errors="none")
    with pytest.warns(UserWarning) as record:
        out, seconds = timed(scorer.score, ["p"] * 6, ["hang"] * 6)
    assert all(math.isnan(v) for v in out.flatten().tolist())
    # Two calls timed out (1 s each) with one restart between them; the other 4 were not made.
    assert 2.0 <= seconds < 5.0 and scorer.pool.restarts == 2
    (message,) = [str(w.message) for w in record if "gave no score" in str(w.message)]
    assert "'sleepy' gave no score for 6 of 6 completions" in message
    assert "timed out after 1s; after 2 of its 2 calls had timed out or crashed their worker, its other 4 calls" in message


def test_with_two_workers_a_reward_that_always_hangs_costs_one_time_limit(started):
    scorer = started([sleepy], workers=2, timeout=1.0, errors="none")
    with pytest.warns(UserWarning, match="its other 6 calls of this batch were not made"):
        out, seconds = timed(scorer.score, ["p"] * 8, ["hang"] * 8)
    assert all(math.isnan(v) for v in out.flatten().tolist())
    assert seconds < 2.5 and scorer.pool.restarts == 2  # both hung at once: one time limit


def test_a_reward_that_hangs_on_some_inputs_still_scores_the_others(started):
    scorer = started([sleepy], workers=2, timeout=1.0, errors="none")
    completions = ["ok", "hang", "ok", "ok", "hang", "ok", "ok", "ok"]
    with pytest.warns(UserWarning, match=r"'sleepy' gave no score for 2 of 8 completions.*completion 1"):
        out, seconds = timed(scorer.score, ["p"] * 8, completions)
    values = out.flatten().tolist()
    assert [i for i, v in enumerate(values) if math.isnan(v)] == [1, 4]
    assert all(v == 1.0 for i, v in enumerate(values) if i not in (1, 4))
    assert seconds < 4.0 and scorer.pool.restarts == 2  # the two hangs ran side by side


def test_a_reward_that_crashes_every_worker_is_not_restarted_once_per_completion(started):
    scorer = started([crashy], errors="none")
    with pytest.warns(UserWarning, match=r"crashed its worker process \(exit code 3\); after 2 of its 2 calls"):
        out = scorer.score(["p"] * 8, ["crash"] * 8)
    assert all(math.isnan(v) for v in out.flatten().tolist())
    assert scorer.pool.restarts == 2


def test_a_slow_restart_is_not_counted_against_the_next_call(started, monkeypatch):
    # Workers take 1.5 s to import the reward module: longer than the 0.5 s time limit.
    monkeypatch.setenv("GRPO_TEST_SLOW_IMPORT_S", "1.5")
    monkeypatch.setenv("GRPO_TEST_PARENT_PID", str(os.getpid()))
    scorer = started([sleepy], timeout=0.5, errors="none")
    with pytest.warns(UserWarning, match="gave no score for 1 of 3"):
        out = scorer.score(["p"] * 3, ["hang", "ok", "ok"])
    values = out.flatten().tolist()
    assert math.isnan(values[0]) and values[1:] == [1.0, 1.0]


def test_a_worker_that_cannot_import_a_reward_says_which_module_and_where_it_looked(tmp_path, monkeypatch):
    (tmp_path / "vanishing_reward_module.py").write_text(
        "def reward(prompts, completions, **columns):\n    return [1.0] * len(completions)\n"
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.delitem(sys.modules, "vanishing_reward_module", raising=False)
    reward = importlib.import_module("vanishing_reward_module").reward  # the file written above

    scorer = RewardScorer([reward], workers=1)
    sys.path.remove(str(tmp_path))  # the workers start with this sys.path: they cannot find the module
    try:
        with pytest.raises(WorkerStartError) as info:
            scorer.score(["p"], ["c"])
    finally:
        scorer.pool.close()
        sys.modules.pop("vanishing_reward_module", None)
    message = str(info.value)
    assert "A reward worker process could not load its functions" in message
    assert "ModuleNotFoundError: No module named 'vanishing_reward_module'" in message
    assert "training process's sys.path" in message and "PYTHONPATH" in message


def test_a_reward_defined_in_an_interactive_session_is_refused_before_any_worker_starts(monkeypatch):
    def typed_in_a_notebook(prompts, completions, **columns):
        return [1.0] * len(completions)

    typed_in_a_notebook.__module__ = "__main__"
    typed_in_a_notebook.__qualname__ = "typed_in_a_notebook"
    monkeypatch.setattr(sys.modules["__main__"], "typed_in_a_notebook", typed_in_a_notebook, raising=False)
    monkeypatch.delattr(sys.modules["__main__"], "__file__", raising=False)  # as in Jupyter
    with pytest.raises(ValueError, match=r"'typed_in_a_notebook' is defined in an interactive session .* \.py file"):
        RewardScorer([typed_in_a_notebook], workers=1)
