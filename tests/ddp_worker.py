"""Trains the DDP-equivalence setting; run as a script by test_ddp.py (``python ddp_worker.py OUT DEVICES``).

With 2 devices Lightning's "ddp" strategy re-launches this script for rank 1 (gloo on CPU); rank 0
saves the final policy weights to OUT.
"""

from __future__ import annotations

import functools
import os
import sys

import torch
from helpers import (
    PROMPTS,
    PerPromptEngine,
    PromptsDataModule,
    make_module,
    make_trainer,
    tiny_tokenizer,
    weights,
)

GLOBAL_PROMPTS = 4  # per training step, over all devices
SETTINGS = {
    "num_generations": 4,
    "num_iterations": 2,  # pi_old and a second pass
    "micro_batch_size": 2,  # gradient accumulation without sync, then one sync
    "beta": 0.04,  # a reference model and the KL term
    "scale_rewards": "batch",  # the std of the whole global batch
    "max_grad_norm": 0.5,  # clipping by the global gradient norm
    # SGD: unlike Adam, its update scales with the gradient, so a wrong loss scale cannot hide.
    "optimizer": functools.partial(torch.optim.SGD, lr=0.5),
}


def train(devices: int) -> dict[str, torch.Tensor]:
    """Two training steps on the same global batches, whatever the number of devices."""
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    # Completions depend on the prompt only, so 1 and 2 devices sample the same ones.
    module = make_module(tok, rollout_engine=PerPromptEngine(), **SETTINGS)
    k = SETTINGS["num_iterations"]
    trainer = make_trainer(
        max_steps=2 * k,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        use_distributed_sampler=False,
    )
    trainer.fit(
        module, datamodule=PromptsDataModule(tok, prompts=PROMPTS, batch_size=GLOBAL_PROMPTS // devices)
    )
    if trainer.global_rank == 0:
        assert trainer.world_size == devices and trainer.global_step == 2 * k
    return weights(module)


if __name__ == "__main__":
    out, devices = sys.argv[1], int(sys.argv[2])
    result = train(devices)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        torch.save(result, out)
