"""The CPU thread policy: the intra-op thread count (respecting the user's), and the OpenMP wait policy
set before torch loads, checked in the OpenMP runtime itself."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import PromptsDataModule, child_env, make_module, make_trainer, tiny_tokenizer

import grpo_lightning.module as module_file
import grpo_lightning.training.threads as threads
from grpo_lightning.training.openmp import prepare_openmp, wait_policy_note
from grpo_lightning.training.threads import (
    choose_threads,
    cpu_quota,
    env_thread_count,
    physical_cores,
    torch_default_threads,
    usable_cpus,
)

# ---- the thread count -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("default", "cpus", "processes", "expected"),
    [
        (2, 2, 1, 2),  # this machine: torch's default is right
        (16, 4, 1, 4),  # taskset / a container quota of 4 CPUs on a 16-core machine
        (8, 8, 2, 4),  # two ranks on one node share its cores
        (8, 8, 3, 2),  # 8 // 3
        (4, 2, 4, 1),  # more ranks than CPUs: one thread each
        (2, 8, 1, 2),  # never more than torch's default (physical cores, not hyperthreads)
    ],
)
def test_the_count_is_the_usable_cpus_shared_by_the_processes_at_most_torchs_default(
    default, cpus, processes, expected
):
    choice = choose_threads(
        current=default, torch_default=default, environ={}, cpus=cpus, processes=processes
    )
    assert choice.threads == expected
    assert choice.reason.startswith(f"{expected} thread{'s' if expected > 1 else ''} ({cpus} usable CPUs")


def test_a_count_the_user_chose_is_kept():
    by_env = choose_threads(current=3, torch_default=3, environ={"OMP_NUM_THREADS": "3"}, cpus=8)
    assert by_env.threads is None and by_env.reason == "3 threads (OMP_NUM_THREADS=3)"
    by_mkl = choose_threads(current=5, torch_default=5, environ={"MKL_NUM_THREADS": " 5 "}, cpus=2)
    assert by_mkl.threads is None and "MKL_NUM_THREADS=5" in by_mkl.reason
    # torch.set_num_threads(1) on a 2-core machine: the current count is not torch's default.
    by_call = choose_threads(current=1, torch_default=2, environ={}, cpus=2)
    assert by_call.threads is None and "set by torch.set_num_threads" in by_call.reason


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_thread_count_variable_that_is_not_a_positive_integer_is_refused(value):
    with pytest.raises(
        ValueError, match=rf"OMP_NUM_THREADS='{value}' is not a thread count: set it to a positive"
    ):
        env_thread_count({"OMP_NUM_THREADS": value})
    with pytest.raises(ValueError, match="MKL_NUM_THREADS"):
        choose_threads(current=2, torch_default=2, environ={"MKL_NUM_THREADS": value}, cpus=2)


def test_nonsense_counts_of_cpus_or_processes_are_refused():
    with pytest.raises(ValueError, match="processes=0"):
        choose_threads(current=2, torch_default=2, environ={}, cpus=2, processes=0)


def test_torchs_default_is_the_variable_else_the_physical_cores():
    assert torch_default_threads({"OMP_NUM_THREADS": "7", "MKL_NUM_THREADS": "3"}) == 7
    assert torch_default_threads({"MKL_NUM_THREADS": "3"}) == 3
    # Without them torch starts one thread per physical core, which the policy counts the same way.
    unset = {k: v for k, v in child_env().items() if k not in threads.THREAD_COUNT_VARIABLES}
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True, text=True, check=True, env=unset,
    )  # fmt: skip
    assert torch_default_threads({}) == int(probe.stdout)


def test_physical_cores_counts_hyperthreads_once(tmp_path):
    for cpu, package, core in [(0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 1, 0)]:  # cpu1 is cpu0's sibling
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    (tmp_path / "cpufreq").mkdir()  # not a CPU
    assert physical_cores(tmp_path) == 3
    assert physical_cores(tmp_path / "missing") is None


def test_a_cgroup_quota_caps_the_usable_cpus(tmp_path):
    assert cpu_quota("max 100000\n") is None
    assert cpu_quota("150000 100000\n") == 1.5
    assert cpu_quota("garbage") is None
    limit = tmp_path / "cpu.max"
    limit.write_text("100000 100000\n")
    assert usable_cpus(limit) == 1
    limit.write_text("50000 100000\n")  # half a CPU: still one thread
    assert usable_cpus(limit) == 1
    assert usable_cpus(tmp_path / "missing") == len(os.sched_getaffinity(0))


@pytest.fixture
def fresh_policy(monkeypatch):
    """The process's choice forgotten, and torch's thread count restored after the test."""
    monkeypatch.setattr(threads, "_applied", None)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_policy_sets_the_count_once_per_process_and_logs_it(fresh_policy, monkeypatch, caplog):
    current = torch.get_num_threads()
    monkeypatch.setattr(threads, "torch_default_threads", lambda environ: current)  # nobody set it
    monkeypatch.setattr(threads, "usable_cpus", lambda: 1)  # e.g. taskset -c 0
    for name in threads.THREAD_COUNT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        first = threads.apply_thread_policy()
        torch.set_num_threads(2)  # the user's own call later in the process is left alone
        second = threads.apply_thread_policy()
    assert first.threads == 1 and second is first
    assert torch.get_num_threads() == 2
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CPU: ")]
    assert len(logged) == 1 and logged[0].startswith("CPU: 1 thread (1 usable CPU; torch's default")


# ---- the wait policy ----------------------------------------------------------------------------------


def test_prepare_openmp_sets_passive_unless_a_policy_is_set_or_torch_is_loaded(monkeypatch):
    assert prepare_openmp({}) is False  # torch is loaded in this process: too late
    monkeypatch.delitem(sys.modules, "torch")
    env: dict[str, str] = {}
    assert prepare_openmp(env) is True and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for name, value in [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "1000"), ("KMP_BLOCKTIME", "0")]:
        env = {name: value}
        assert prepare_openmp(env) is False and env == {name: value}


def test_the_wait_policy_note_says_what_idle_threads_do():
    assert wait_policy_note({"OMP_WAIT_POLICY": "PASSIVE"}) == "idle threads sleep (OMP_WAIT_POLICY=PASSIVE)"
    assert "GOMP_SPINCOUNT=1000" in wait_policy_note({"GOMP_SPINCOUNT": "1000"})
    assert "torch was loaded before grpo-lightning could set OMP_WAIT_POLICY=PASSIVE" in wait_policy_note({})


def spin_count(code: str, **env: str) -> str:
    """The GOMP_SPINCOUNT the OpenMP runtime reports when it loads in a fresh process running ``code``."""
    base = {
        k: v
        for k, v in child_env().items()
        if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**base, "OMP_DISPLAY_ENV": "VERBOSE", **env},
    )  # fmt: skip
    found = [
        line.split("=")[1].strip().strip("'") for line in out.stderr.splitlines() if "GOMP_SPINCOUNT" in line
    ]
    assert found, f"the OpenMP runtime printed no settings:\n{out.stderr[-2000:]}"
    return found[0]


def test_the_runtime_gets_the_passive_policy_only_when_set_before_torch_loads():
    """libgomp spins 300,000 turns by default and none with OMP_WAIT_POLICY=PASSIVE."""
    before = "from grpo_lightning.training.openmp import prepare_openmp; prepare_openmp(); import torch"
    after = "import torch; from grpo_lightning.training.openmp import prepare_openmp; prepare_openmp()"
    assert spin_count(before) == "0"
    assert spin_count(after) == "300000"
    assert spin_count(before, GOMP_SPINCOUNT="1000") == "1000"  # the user's setting wins


def test_the_module_entry_point_sets_the_policy_before_torch_loads():
    """``python -m grpo_lightning`` (and ``grpo_lightning.__main__:main``) start with idle threads asleep;
    importing the entry point's module loads no torch."""
    assert spin_count("import runpy, sys; sys.argv = ['grpo_lightning', '--help']; "
                      "runpy.run_module('grpo_lightning', run_name='__main__')") == "0"  # fmt: skip
    probe = "import sys, grpo_lightning.__main__; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", probe], check=True, env=child_env())


def test_the_console_script_is_that_entry_point():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()  # tomllib: Python >= 3.11 only
    assert '\ngrpo-lightning = "grpo_lightning.__main__:main"\n' in pyproject


def test_fitting_applies_the_policy_with_the_nodes_process_count(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(module_file, "apply_thread_policy", lambda processes: calls.append(processes))
    tok = tiny_tokenizer()
    make_trainer(max_steps=1).fit(make_module(tok), datamodule=PromptsDataModule(tok))
    assert calls == [1]  # one CPU process on this node
