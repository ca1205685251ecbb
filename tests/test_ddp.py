"""DDP and FSDP2 on CPU: two processes (gloo) update the weights exactly as one process on the same
global batch, and validate alike.

Rewards are gathered and advantages computed over both ranks, the loss normaliser is all-reduced,
micro-batches accumulate without gradient sync, and DDP's gradient mean is undone by the module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import train
from helpers import make_module, weights
from transformers import AutoModelForCausalLM

import grpo_lightning.algorithm.update as update
from grpo_lightning.logprobs import sequence_logprobs

HERE = Path(__file__).parent


def _run_worker(tmp_path: Path, mode: str) -> Path:
    """Run ddp_worker.py with 2 processes; returns the file rank 0 wrote."""
    out = tmp_path / "result.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    for var in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    done = subprocess.run(
        [sys.executable, str(HERE / "ddp_worker.py"), str(out), mode],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_match_one_process(tmp_path, strategy, monkeypatch):
    out = _run_worker(tmp_path, strategy)
    sharded, sharded_metrics = torch.load(out)
    if strategy == "fsdp2":
        # Sharded models compute every row's prompt (see shared_prefix_logprobs): so does the reference
        # run, so that the two agree to float32 rounding of the same computation.
        monkeypatch.setattr(update, "shared_prefix_logprobs", sequence_logprobs)
    single, single_metrics = train("single")
    start = weights(make_module())  # the same random initialisation (the EOS row aside)
    assert any(not torch.equal(single[k], v) for k, v in start.items())  # training moved the weights
    for key, value in single.items():
        torch.testing.assert_close(sharded[key], value, atol=1e-6, rtol=1e-5)
    assert sharded_metrics.keys() == single_metrics.keys()
    for key, value in single_metrics.items():
        assert sharded_metrics[key] == pytest.approx(value, abs=1e-6), key
    exported = AutoModelForCausalLM.from_pretrained(f"{out}.export").state_dict()
    for key, value in single.items():
        torch.testing.assert_close(exported[key], value, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_fsdp2_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path):
    full, resumed = torch.load(_run_worker(tmp_path, "fsdp2-resume"))
    for key, value in full.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0)
