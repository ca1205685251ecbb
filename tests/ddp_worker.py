"""Trains the multi-device equivalence setting; run as a script by test_ddp.py
(``python ddp_worker.py OUT ddp|fsdp2|fsdp2-resume``).

Lightning re-launches this script for rank 1 (gloo on CPU); rank 0 saves the final policy weights
and the validation metrics to OUT.
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
    tiny_model,
    tiny_tokenizer,
    weights,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy

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


def train(
    strategy: str = "single",
    rollouts: int = 2,
    checkpoint_dir: str | None = None,
    resume_from: str | None = None,
    export: str | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """``rollouts`` training steps on the same global batches whatever the number of devices, then
    validation; returns the policy weights and the validation metrics.

    ``strategy``: "single" (one process), "ddp" or "fsdp2" (two processes). Optionally checkpoints
    after every rollout to ``checkpoint_dir``, resumes from ``resume_from``, and exports the policy
    with ``save_pretrained`` to ``export``.
    """
    torch.set_num_threads(1)
    devices = 1 if strategy == "single" else 2
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    with torch.no_grad():  # make EOS likely: completion lengths then differ between prompts and ranks
        model.get_output_embeddings().weight[tok.eos_token_id] *= 40
    # Completions depend on the prompt only, so 1 and 2 devices sample the same ones.
    module = make_module(tok, model=model, rollout_engine=PerPromptEngine(), **SETTINGS)
    k = SETTINGS["num_iterations"]
    strategies = {
        "single": "auto",
        "ddp": "ddp",
        # FSDP2: GRPOModule.configure_model shards each decoder layer and the root over the mesh.
        "fsdp2": ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1),
    }
    checkpoints = (
        [ModelCheckpoint(checkpoint_dir, every_n_train_steps=k, save_top_k=-1)] if checkpoint_dir else []
    )
    trainer = make_trainer(
        max_steps=rollouts * k,
        devices=devices,
        strategy=strategies[strategy],
        use_distributed_sampler=False,
        limit_val_batches=1.0,
        callbacks=checkpoints,
        enable_checkpointing=bool(checkpoints),
    )
    dm = PromptsDataModule(tok, prompts=PROMPTS, batch_size=GLOBAL_PROMPTS // devices)
    trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
    assert trainer.world_size == devices and trainer.global_step == rollouts * k
    (metrics,) = trainer.validate(module, datamodule=dm, verbose=False)
    if export is not None:
        module.save_pretrained(export)  # every rank calls it (FSDP2 gathers the shards); rank 0 writes
    return weights(module), metrics


if __name__ == "__main__":
    out, strategy = sys.argv[1], sys.argv[2]
    if strategy.endswith("-resume"):
        # Three rollouts, checkpointing after each; then resume from the first checkpoint (mid-epoch:
        # an epoch is 8 prompts / 4 per step = 2 rollouts) and train to the same end.
        strategy = strategy.removesuffix("-resume")
        folder = out + ".checkpoints"
        full, _ = train(strategy, rollouts=3, checkpoint_dir=folder)
        first = os.path.join(folder, f"epoch=0-step={SETTINGS['num_iterations']}.ckpt")
        resumed, _ = train(strategy, rollouts=3, resume_from=first)
        result = (full, resumed)
    else:
        result = train(strategy, export=out + ".export")
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        torch.save(result, out)
