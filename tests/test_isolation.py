"""The process-isolation service behind reward workers and the math checker: lean children, a dead
child reported and replaced, children that outlive the thread that started them, and no process
left behind by close, by exit, or by a function defined in the training script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import fake_checker
import pytest
from faulty_rewards import completion_length, torch_loaded
from processes import gone, ours

from grpo_lightning.rewards import _mathcheck
from grpo_lightning.rewards._checker_pool import CheckerPool
from grpo_lightning.rewards.workers import CallFailure, RewardWorkerPool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def test_a_math_checker_process_loads_sympy_but_not_torch():
    pool = CheckerPool(1, fake_checker.handle, _mathcheck.prepare)
    try:
        assert pool.run([["loaded", "sympy"], ["loaded", "torch"], ["loaded", "lightning"]], 60) == [
            True,
            False,
            False,
        ]
    finally:
        pool.close()


def test_a_reward_worker_imports_the_rewards_module_and_not_torch():
    pool = RewardWorkerPool([torch_loaded], 1, 60.0)
    try:
        assert pool.map([(0, {"prompts": ["p"], "completions": ["c"]})]) == [[0.0]]
    finally:
        pool.close()


def test_close_ends_and_reaps_every_child():
    pool = RewardWorkerPool([completion_length], 2, 60.0)
    tasks = [(0, {"prompts": ["p"], "completions": ["abc"]})] * 4
    assert pool.map(tasks) == [[3.0]] * 4
    pids = pool.pids
    assert len(pids) == 2 and all(ours(pid) for pid in pids)
    pool.close()
    assert pool.pids == [] and not any(ours(pid) for pid in pids)  # ended and reaped: no zombie


def test_a_child_killed_between_calls_is_reported_for_its_next_call_and_replaced():
    pool = RewardWorkerPool([completion_length], 1, 60.0)
    try:
        call = (0, {"prompts": ["p"], "completions": ["ab"]})
        assert pool.map([call]) == [[2.0]]
        (pid,) = pool.pids
        os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer would
        assert gone(pid)
        assert pool.map([call, call]) == [CallFailure("crashed its worker process (exit code -9)"), [2.0]]
        assert pool.restarts == 1 and pool.pids != [pid] and not ours(pid)
    finally:
        pool.close()


def test_children_outlive_the_thread_that_started_them():
    # On Linux a child dies with the *thread* that started it (PR_SET_PDEATHSIG): a reward first called
    # from a short-lived thread must not lose its workers when that thread ends.
    pool = CheckerPool(1, fake_checker.handle, None)
    try:
        first: list[int] = []
        thread = threading.Thread(target=lambda: first.extend(pool.run([["pid"]], 30)))
        thread.start()
        thread.join()
        time.sleep(0.2)
        assert pool.run([["pid"]], 30) == first and pool.restarts == 0
    finally:
        pool.close()


def _run_script(tmp_path, name: str, code: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS])}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)


def test_a_pool_left_open_ends_its_children_at_exit(tmp_path):
    done = _run_script(
        tmp_path,
        "left_open.py",
        """
        import json
        from faulty_rewards import completion_length
        from grpo_lightning.rewards.workers import RewardWorkerPool
        pool = RewardWorkerPool([completion_length], 2, 60.0)
        pool.map([(0, {"prompts": ["p"], "completions": ["c"]})] * 2)
        print(json.dumps(pool.pids))
        """,
    )
    assert done.returncode == 0, done.stderr
    pids = json.loads(done.stdout)
    assert len(pids) == 2 and all(gone(pid) for pid in pids)


def test_a_reward_defined_in_the_training_script_runs_without_rerunning_the_script(tmp_path):
    done = _run_script(
        tmp_path,
        "train.py",
        """
        from grpo_lightning.rewards.scorer import RewardScorer

        def doubled_length(prompts, completions, **columns):
            return [2.0 * len(c) for c in completions]

        if __name__ == "__main__":
            print("training starts")
            scorer = RewardScorer([doubled_length], workers=1, timeout=60.0)
            print(scorer.score(["p", "q"], ["ab", "abc"]).flatten().tolist())
            scorer.pool.close()
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["training starts", "[4.0, 6.0]"]  # the entry point ran once
