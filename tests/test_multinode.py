"""Two nodes on one machine: one CPU process per "node" over gloo on the loopback interface, launched
the ways Lightning users launch multi-node jobs (torchrun with --nnodes, and srun's SLURM variables
with ``num_nodes``). The weights after training equal one process on the same global batch; each rank
samples its own prompts with its own seed, and advantages use the statistics of the global batch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import SETTINGS, train
from helpers import child_env, free_port, one_thread  # noqa: F401 (autouse fixture)

import grpo_lightning.algorithm.update as update
from grpo_lightning.algorithm.advantages import compute_advantages
from grpo_lightning.logprobs import sequence_logprobs
from grpo_lightning.rollout.seeds import SeedStream, stream_seed

HERE = Path(__file__).parent
NODES = 2
G = SETTINGS["num_generations"]
SCALE = SETTINGS["scale_rewards"]


def _node_commands(strategy: str, launcher: str, out: Path, port: int) -> list[tuple[list[str], dict]]:
    """(argv, extra environment) of each node's launch."""
    worker = [str(HERE / "ddp_worker.py"), str(out), strategy, str(NODES)]
    if launcher == "torchrun":  # torchrun --nnodes 2 --nproc-per-node 1 --node-rank R ... worker
        torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={NODES}", "--nproc-per-node=1"]
        address = ["--master-addr=127.0.0.1", f"--master-port={port}"]
        return [([*torchrun, f"--node-rank={node}", *address, *worker], {}) for node in range(NODES)]
    # What srun sets for `srun --nodes 2 --ntasks-per-node 1 python worker` (one task per node).
    slurm = {"SLURM_NTASKS": str(NODES), "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": str(NODES),
             "SLURM_JOB_NAME": "grpo", "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "127.0.0.1",
             "MASTER_PORT": str(port)}  # fmt: skip
    return [
        (
            [sys.executable, *worker],
            {**slurm, "SLURM_PROCID": str(n), "SLURM_LOCALID": "0", "SLURM_NODEID": str(n)},
        )
        for n in range(NODES)
    ]


def _launch_two_nodes(tmp_path: Path, strategy: str, launcher: str) -> Path:
    out = tmp_path / "result.pt"
    base = child_env(str(HERE))
    port = free_port()
    logs = [tmp_path / f"node{n}.log" for n in range(NODES)]
    procs = []
    # Output goes to files: a full pipe would block one node while the other waits for it.
    for (argv, extra), log in zip(_node_commands(strategy, launcher, out, port), logs, strict=True):
        with open(log, "w") as sink:
            procs.append(
                subprocess.Popen(argv, cwd=tmp_path, env={**base, **extra}, stdout=sink, stderr=sink)
            )
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for node, (code, log) in enumerate(zip(codes, logs, strict=True)):
        assert code == 0, f"node {node}:\n{log.read_text()[-3000:]}"
    return out


def _by_prompt(rows: list[str], values: torch.Tensor) -> dict[str, torch.Tensor]:
    """{prompt: its G values}; rows hold each prompt's G completions consecutively."""
    return {rows[i]: values[i : i + G] for i in range(0, len(rows), G)}


def check_rollouts_across_nodes(single: list[dict], ranks: list[list[dict]]) -> None:
    """Per training step: distinct prompts and seeds per rank, together the single run's global batch,
    with its rewards and its advantages (statistics of the whole global batch, not of one rank)."""
    assert len(single) == len(ranks[0]) == len(ranks[1]) >= 2
    # Each rank's rewards alone give other advantages (another batch std) in some step: the comparison
    # below can tell local statistics from global ones.
    for steps in ranks:
        assert any(
            not torch.allclose(compute_advantages(s["rewards"], G, SCALE), s["advantages"], atol=1e-4)
            for s in steps
        )
    for ref, *views in zip(single, *ranks, strict=True):
        step = ref["global_step"]
        for rank, view in enumerate(views):
            assert (view["global_rank"], view["node_rank"], view["num_nodes"]) == (rank, rank, NODES)
            assert view["world_size"] == view["data_parallel_size"] == NODES  # FSDP2: every process
            assert view["global_step"] == step
            assert view["seeds"] == [stream_seed(0, rank, step, SeedStream.ROLLOUT)]
        assert views[0]["seeds"] != views[1]["seeds"]
        prompts = [set(v["row_prompts"]) for v in views]
        assert not prompts[0] & prompts[1] and prompts[0] | prompts[1] == set(ref["row_prompts"])
        expected_rewards = _by_prompt(ref["row_prompts"], ref["rewards"])
        expected_advantages = _by_prompt(ref["row_prompts"], ref["advantages"])
        for view in views:
            for prompt, values in _by_prompt(view["row_prompts"], view["rewards"]).items():
                torch.testing.assert_close(values, expected_rewards[prompt])
            for prompt, values in _by_prompt(view["row_prompts"], view["advantages"]).items():
                torch.testing.assert_close(values, expected_advantages[prompt], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "launcher"), [("ddp", "slurm"), ("fsdp2", "torchrun")])
def test_two_nodes_match_one_process(tmp_path, strategy, launcher, monkeypatch):
    out = _launch_two_nodes(tmp_path, strategy, launcher)
    sharded, sharded_metrics = torch.load(out)
    ranks = [torch.load(f"{out}.rank{r}") for r in range(NODES)]
    if strategy == "fsdp2":
        # As in test_ddp: sharded models recompute every row's prompt, so the reference does too.
        monkeypatch.setattr(update, "shared_prefix_logprobs", sequence_logprobs)
    steps: list[dict] = []
    single, single_metrics = train("single", recorder=steps)
    for key, value in single.items():
        torch.testing.assert_close(sharded[key], value, atol=1e-6, rtol=1e-5)
    assert sharded_metrics.keys() == single_metrics.keys()
    for key, value in single_metrics.items():
        assert sharded_metrics[key] == pytest.approx(value, abs=1e-6), key
    check_rollouts_across_nodes(steps, ranks)
