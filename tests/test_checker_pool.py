"""Checker processes: replies in order, a hard time limit that kills and replaces, retries after a
crash, clear start-up errors, one pool per process, and children that die with their parent."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import fake_checker
import pytest
from processes import gone, ours

from grpo_lightning.isolation import pool as isolation_pool
from grpo_lightning.isolation.pool import WorkerStartError
from grpo_lightning.rewards._checker_pool import CheckerPool, Failed, _Jobs, shared_pool


@pytest.fixture
def checker():
    """``checker(num_workers, setup=None)``: a pool of fake checkers, closed at the end."""
    pools = []

    def make(num_workers=1, setup=None):
        pools.append(CheckerPool(num_workers, fake_checker.handle, setup))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()


def test_replies_come_back_in_order_across_processes(checker):
    pool = checker(num_workers=2)
    requests = [["echo", f"é{i}"] for i in range(50)]
    assert pool.run(requests, timeout=30) == [f"é{i}" for i in range(50)]
    pids = pool.run([["pid"]] * 20, timeout=30, keys=[0] * 10 + [1] * 10)
    assert len(set(pids)) <= 2 and set(pids) <= set(pool.pids)


def test_a_request_past_its_limit_is_killed_and_its_process_replaced(checker):
    pool = checker(num_workers=1)
    pid = pool.run([["pid"]], timeout=30)[0]
    replies = pool.run([["echo", 1], ["sleep", 60], ["echo", 2]], timeout=0.5)
    assert replies[0] == 1 and replies[2] == 2
    assert isinstance(replies[1], Failed) and "0.5 s time limit" in replies[1].reason
    assert pool.restarts == 1
    new_pid = pool.run([["pid"]], timeout=30)[0]
    assert new_pid != pid
    assert not ours(pid)  # the hung process is gone and reaped, not left running or a zombie


def test_no_time_limit_waits(checker):
    pool = checker()
    assert pool.run([["sleep", 0.2]], timeout=None) == ["slept"]


def test_a_crash_is_retried_once_then_reported(checker, tmp_path):
    pool = checker()
    marker = str(tmp_path / "died")
    assert pool.run([["die_once", marker], ["echo", "after"]], timeout=30) == ["second try", "after"]
    replies = pool.run([["die"], ["echo", "still here"]], timeout=30)
    assert isinstance(replies[0], Failed) and "died on it twice (exit code 3)" in replies[0].reason
    assert replies[1] == "still here"


def test_an_error_in_the_checker_is_a_failed_reply(checker):
    replies = checker().run([["bogus"], ["echo", 1]], timeout=30)
    assert replies[0] == Failed("the checker raised ValueError: unknown request") and replies[1] == 1


def test_a_checker_that_cannot_load_its_library_is_a_clear_error(checker):
    pool = checker(setup=fake_checker.import_missing)
    with pytest.raises(
        WorkerStartError,
        match=r"(?s)A math checker process could not load its functions.*No module named 'no_such_module_here'"
        r".*PYTHONPATH.*Is math-verify installed",
    ):
        pool.run([["echo", 1]], timeout=30)
    assert pool.pids == []  # the process that failed was reaped


def test_a_checker_that_exits_while_starting_shows_its_error_output(checker):
    pool = checker(setup=fake_checker.exit_at_start)
    with pytest.raises(
        WorkerStartError, match=r"(?s)exited while starting \(exit code 1\).*the native library failed to load"
    ):
        pool.run([["echo", 1]], timeout=30)


def test_requests_are_grouped_by_key_and_idle_processes_steal():
    jobs = _Jobs([["echo", i] for i in range(6)], keys=[0, 0, 0, 1, 5, 3], slots=2)  # even keys to slot 0
    assert [list(q) for q in jobs.queues] == [[0, 1, 2], [3, 4, 5]]
    assert jobs.take(0) == 0  # its own queue, from the front
    assert jobs.take(1) == 3
    assert jobs.take(1) == 4
    assert jobs.take(1) == 5
    assert jobs.take(1) == 2  # its queue is empty: it steals from the back of the longest
    jobs.put_back(5)
    assert [list(q) for q in jobs.queues] == [[1], [5]] and jobs.waiting()
    assert jobs.take(0) == 1 and jobs.take(1) == 5 and jobs.take(0) is None and not jobs.waiting()


def test_one_pool_per_process_and_settings(monkeypatch):
    assert shared_pool(2, fake_checker.handle, None) is shared_pool(2, fake_checker.handle, None)
    assert shared_pool(2, fake_checker.handle, None) is not shared_pool(3, fake_checker.handle, None)
    parent_pool = shared_pool(2, fake_checker.handle, None)
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a forked child: its own pool, not the parent's
    assert shared_pool(2, fake_checker.handle, None) is not parent_pool


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_uses_its_own_processes():
    # As in a DataLoader worker: the child must not write into its parent's pipes.
    parent_pool = shared_pool(1, fake_checker.handle, None)
    parent_checker = parent_pool.run([["pid"]], timeout=30)[0]
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report which checker answered it, then leave without cleanup
        try:
            pool = shared_pool(1, fake_checker.handle, None)
            os.write(write_end, json.dumps([pool is parent_pool, pool.run([["pid"]], timeout=30)[0]]).encode())
            pool.close()
            parent_pool.close()  # a forked copy: must leave the parent's processes alone
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reply:
        same_pool, child_checker = json.loads(reply.read())
    os.waitpid(child, 0)
    assert not same_pool and child_checker != parent_checker
    assert parent_pool.run([["echo", "parent still served"]], timeout=30) == ["parent still served"]
    assert parent_pool.pids == [parent_checker]
    parent_pool.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_checker_processes_die_with_their_parent():
    # The parent is killed while its checker is busy (a request that would run for a minute): the
    # kernel kills the checker too, instead of leaving it to finish on its own.
    parent_code = textwrap.dedent(
        f"""
        import json, sys
        sys.path[:0] = [{os.getcwd()!r}, {os.path.dirname(__file__)!r}]
        import fake_checker
        from grpo_lightning.rewards._checker_pool import CheckerPool
        pool = CheckerPool(1, fake_checker.handle, None)
        pool.run([["echo", 0]], None)
        print(json.dumps(pool.pids), flush=True)
        pool.run([["sleep", 60]], None)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    child_pid = json.loads(parent.stdout.readline())[0]
    os.kill(child_pid, 0)  # alive
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert gone(child_pid, seconds=10)  # the kernel delivers the signal within 10 s


def test_startup_timeout_is_reported(checker, monkeypatch):
    monkeypatch.setattr(isolation_pool, "STARTUP_S", 0.5)
    pool = checker(setup=fake_checker.hang_at_start)
    with pytest.raises(WorkerStartError, match=r"did not start within 0\.5 s"):
        pool.run([["echo", 1]], timeout=30)
    assert pool.pids == []  # the stuck process was killed
