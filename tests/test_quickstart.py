"""The quickstart, shortened: the shipped model, the shipped config, a few steps, validation and export."""

from __future__ import annotations

import csv
import glob
import os

import pytest
import torch
from helpers import one_thread  # noqa: F401 (autouse fixture)

from grpo_lightning.cli.app import main

CONFIG = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "configs", "quickstart.yaml"))


@pytest.mark.slow
def test_quickstart_config_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # logs, checkpoints and the export go under ./runs
    main(
        [
            "fit",
            "--config",
            CONFIG,
            "--trainer.max_steps=5",
            "--trainer.val_check_interval=5",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--data.batch_size=4",
            "--data.val_batch_size=8",
            "--data.synthetic={train_size: 64, val_size: 8, test_size: 8, min_steps: 3, max_steps: 3, max_operand: 10, style: phrased}",
        ]
    )
    out = capsys.readouterr().out
    assert "GRPO run finished." in out
    (metrics_file,) = glob.glob("runs/quickstart/version_*/metrics.csv")
    with open(metrics_file) as f:
        rows = list(csv.DictReader(f))
    val = [float(r["val/accuracy"]) for r in rows if r.get("val/accuracy")]
    assert len(val) == 2  # before training (sanity check on the full val set) and after step 5
    assert all(0.0 <= v <= 1.0 for v in val)
    rewards = [float(r["train/reward"]) for r in rows if r.get("train/reward")]
    assert len(rewards) == 5 and all(0.0 <= r <= 1.0 for r in rewards)  # one per step, on the progress bar too
    (last,) = glob.glob("runs/quickstart/version_*/checkpoints/last.ckpt")
    assert torch.load(last, weights_only=False)["global_step"] == 5  # the final step, not the best one
    assert os.path.isfile("runs/quickstart/version_0/hf_model/config.json")
