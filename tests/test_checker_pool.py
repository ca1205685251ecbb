"""Checker processes: replies in order, a hard time limit that kills and replaces, retries after a
crash, clear start-up errors, one pool per process, and children that die with their parent."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from grpo_lightning.rewards import _checker_pool
from grpo_lightning.rewards._checker_pool import CheckerPool, CheckerStartError, Failed, _Jobs, shared_pool

# A checker speaking the pool's protocol without math-verify, so each behaviour can be provoked.
FAKE_CHECKER = textwrap.dedent(
    """
    import json, os, sys, time
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    replies.write(json.dumps("ready") + "\\n")
    for line in sys.stdin:
        kind, *args = json.loads(line)
        if kind == "echo":
            reply = ["ok", args[0]]
        elif kind == "pid":
            reply = ["ok", os.getpid()]
        elif kind == "sleep":
            time.sleep(args[0])
            reply = ["ok", "slept"]
        elif kind == "die":
            os._exit(3)
        elif kind == "die_once":  # dies the first time it sees this marker file
            if not os.path.exists(args[0]):
                open(args[0], "w").close()
                os._exit(3)
            reply = ["ok", "second try"]
        else:
            reply = ["error", "ValueError: unknown request"]
        replies.write(json.dumps(reply) + "\\n")
    """
)


@pytest.fixture
def checker(tmp_path):
    path = tmp_path / "fake_checker.py"
    path.write_text(FAKE_CHECKER)
    pools = []

    def make(num_workers=1):
        pools.append(CheckerPool(str(path), num_workers))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()


def test_replies_come_back_in_order_across_processes(checker):
    pool = checker(num_workers=2)
    requests = [["echo", f"é{i}"] for i in range(50)]  # non-ASCII survives the ASCII pipe
    assert pool.run(requests, timeout=30) == [f"é{i}" for i in range(50)]
    pids = pool.run([["pid"]] * 20, timeout=30, keys=[0] * 10 + [1] * 10)
    assert len(set(pids)) <= 2


def test_a_request_past_its_limit_is_killed_and_its_process_replaced(checker):
    pool = checker(num_workers=1)
    pid = pool.run([["pid"]], timeout=30)[0]
    replies = pool.run([["echo", 1], ["sleep", 60], ["echo", 2]], timeout=0.5)
    assert replies[0] == 1 and replies[2] == 2
    assert isinstance(replies[1], Failed) and "0.5 s time limit" in replies[1].reason
    assert pool.restarts == 1
    new_pid = pool.run([["pid"]], timeout=30)[0]
    assert new_pid != pid
    with pytest.raises(ProcessLookupError):  # the hung process is gone, not left running
        os.kill(pid, 0)


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


def test_a_checker_that_cannot_start_is_a_clear_error(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("import no_such_module_here\n")
    pool = CheckerPool(str(script), 1)
    with pytest.raises(
        CheckerStartError,
        match=r"(?s)exited with code 1 while starting.*Is math-verify installed.*No module named 'no_such_module_here'",
    ):
        pool.run([["echo", 1]], timeout=30)


def test_requests_are_grouped_by_key_and_idle_processes_steal():
    jobs = _Jobs(keys=[0, 0, 0, 1, 5, 3], slots=2)  # keys 0 (even) to slot 0, odd to slot 1
    assert [list(q) for q in jobs.queues] == [[0, 1, 2], [3, 4, 5]]
    assert jobs.take(0) == 0  # its own queue, from the front
    assert jobs.take(1) == 3
    assert jobs.take(1) == 4
    assert jobs.take(1) == 5
    assert jobs.take(1) == 2  # its queue is empty: it steals from the back of the longest
    jobs.put_back(5)
    assert [list(q) for q in jobs.queues] == [[1], [5]] and bool(jobs)


def test_one_pool_per_process_and_settings(monkeypatch, tmp_path):
    script = str(tmp_path / "x.py")
    assert shared_pool(script, 2) is shared_pool(script, 2)
    assert shared_pool(script, 2) is not shared_pool(script, 3)
    parent_pool = shared_pool(script, 2)
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a forked child: its own pool, not the parent's
    assert shared_pool(script, 2) is not parent_pool


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_uses_its_own_processes(tmp_path):
    # As in a DataLoader worker: the child must not write into its parent's pipes.
    script = tmp_path / "fake_checker.py"
    script.write_text(FAKE_CHECKER)
    parent_pool = shared_pool(str(script), 1)
    parent_checker = parent_pool.run([["pid"]], timeout=30)[0]
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report which checker answered it, then leave without cleanup
        try:
            pool = shared_pool(str(script), 1)
            os.write(
                write_end, json.dumps([pool is parent_pool, pool.run([["pid"]], timeout=30)[0]]).encode()
            )
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reply:
        same_pool, child_checker = json.loads(reply.read())
    os.waitpid(child, 0)
    assert not same_pool and child_checker != parent_checker
    assert parent_pool.run([["echo", "parent still served"]], timeout=30) == ["parent still served"]
    parent_pool.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_checker_processes_die_with_their_parent(tmp_path):
    # The parent is killed while its checker is busy (a request that would run for a minute): the
    # kernel kills the checker too, instead of leaving it to finish on its own.
    script = tmp_path / "fake_checker.py"
    script.write_text(FAKE_CHECKER)
    parent_code = textwrap.dedent(
        f"""
        import json, sys, threading
        sys.path.insert(0, {os.getcwd()!r})
        from grpo_lightning.rewards._checker_pool import CheckerPool
        pool = CheckerPool({str(script)!r}, 1)
        pool.run([["echo", 0]], None)
        print(json.dumps([w.proc.pid for w in pool._workers.values()]), flush=True)
        pool.run([["sleep", 60]], None)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    child_pid = json.loads(parent.stdout.readline())[0]
    os.kill(child_pid, 0)  # alive
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(100):  # poll up to 10 s for the kernel to deliver the signal
        if not _alive(child_pid):
            break
        time.sleep(0.1)
    assert not _alive(child_pid)


def _alive(pid):
    """True while ``pid`` runs (a zombie, dead but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_startup_timeout_is_reported(checker, monkeypatch, tmp_path):
    script = tmp_path / "slow_start.py"
    script.write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setattr(_checker_pool, "STARTUP_TIMEOUT", 0.5)
    pool = CheckerPool(str(script), 1)
    with pytest.raises(CheckerStartError, match=r"did not start within 0\.5 s"):
        pool.run([["echo", 1]], timeout=30)
    assert not pool._workers  # the stuck process was killed
