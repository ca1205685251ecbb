"""The default optimizer runs AdamW's fastest kernel (fused on CPU), with the same update as the others."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grpo_lightning.training.optim import OptimizerConfig, adamw_implementation, configure_optimizers


def test_the_default_adamw_is_fused_on_cpu():
    policy = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    opt = configure_optimizers(policy, OptimizerConfig(learning_rate=1e-3))["optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["fused"] for g in opt.param_groups] == [True, True]


def test_parameters_without_a_fused_kernel_get_the_best_one_torch_has():
    assert adamw_implementation([nn.Parameter(torch.zeros(2))]) == {"fused": True}
    # The meta device has neither kernel: torch's per-tensor loop (no argument).
    assert adamw_implementation([nn.Parameter(torch.zeros(2, device="meta"))]) == {}


@pytest.mark.parametrize("kernel", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_every_kernel_takes_the_hand_computed_adamw_step(kernel):
    """p = 1, g = 0.5, lr 0.1, betas (0.9, 0.999), weight decay 0.1: the first step's bias-corrected
    moments are m = 0.5, v = 0.25, so p <- p * (1 - lr * wd) - lr * m / (sqrt(v) + eps)
    = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.89 (to 2e-9)."""
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 0.5)
    torch.optim.AdamW([p], lr=0.1, weight_decay=0.1, **kernel).step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.89), rtol=0, atol=1e-7)
