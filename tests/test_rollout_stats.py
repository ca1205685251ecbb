"""The step's metrics as a pure function of the gathered rollout, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_lightning.training.rollout_stats import rollout_metrics

NAN = float("nan")


def test_rollout_metrics_by_hand():
    gathered = {
        "total": torch.tensor([1.0, 3.0, 2.0, 2.0]),  # G = 2: one group with a spread, one flat
        "per_func": torch.tensor([[1.0, NAN, NAN], [3.0, 1.0, NAN], [2.0, NAN, NAN], [2.0, 3.0, NAN]]),
        "lengths": torch.tensor([2.0, 4.0, 6.0, 8.0]),
        "truncated": torch.tensor([0.0, 1.0, 0.0, 0.0]),
        "advantages": torch.tensor([-0.5, 0.5, 0.0, 0.0]),
    }
    losses = {"loss": torch.tensor(0.25), "kl": torch.tensor(0.125), "ratio_mean": torch.tensor(1.0)}
    values = rollout_metrics(gathered, ["a", "b", "c"], 2, losses, rollout_s=1.0, update_s=3.0)
    expected = {
        "train/reward": 2.0,
        # group stds (sample): sqrt(((1-2)^2 + (3-2)^2) / 1) = sqrt(2), and 0; their mean:
        "train/reward_std": math.sqrt(2) / 2,
        "train/advantage_abs_mean": 0.25,
        "train/frac_zero_std_groups": 0.5,
        "train/completions/mean_length": 5.0,
        "train/completions/min_length": 2.0,
        "train/completions/max_length": 8.0,
        "train/completions/clipped_ratio": 0.25,
        "perf/rollout_s": 1.0,
        "perf/update_s": 3.0,
        "perf/tokens_per_s": 20 / 4,  # completion tokens over both phases' seconds
        "train/rewards/a/mean": 2.0,
        "train/rewards/a/std": math.sqrt(2 / 3),  # sample std of 1, 3, 2, 2
        "train/rewards/b/mean": 2.0,  # NaN (not applicable) left out: 1 and 3
        "train/rewards/b/std": math.sqrt(2),
        "train/rewards/c/mean": NAN,  # never applicable in the batch
        "train/rewards/c/std": 0.0,
        "train/loss": 0.25,
        "train/kl": 0.125,  # ratio_mean is not a logged metric
    }
    assert set(values) == set(expected)
    for key, value in expected.items():
        assert float(values[key]) == pytest.approx(value, nan_ok=True, rel=1e-6), key
