"""Trains the multi-device equivalence setting; run as a script by test_ddp.py and test_multinode.py
(``python ddp_worker.py OUT ddp|fsdp2|fsdp2-resume [NUM_NODES]``).

On one node Lightning re-launches this script for rank 1 (gloo on CPU); with NUM_NODES=2 a launcher
(torchrun, SLURM) starts one process per node. Rank 0 saves the final policy weights and the
validation metrics to OUT; with NUM_NODES each rank also saves what it sampled and scored to
OUT.rank<R> (see RolloutRecorder).
"""

from __future__ import annotations

import functools
import os
import sys

import torch
import torch.distributed as dist
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
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from grpo_lightning.training.strategies import FSDP2Strategy

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


class RecordingEngine(PerPromptEngine):
    """PerPromptEngine that keeps the seed the module passes to every call (its per-rank rollout seed)."""

    def __init__(self) -> None:
        super().__init__()
        self.seeds: list[int] = []

    def generate(self, model, request):
        self.seeds.append(request.seed)
        return super().generate(model, request)


class RolloutRecorder(Callback):
    """Per training step, this rank's view: its place, the rollout seeds, and each row's prompt, total
    reward [N] and advantage [N] (N = local prompts x num_generations)."""

    def __init__(self, engine: RecordingEngine) -> None:
        self.engine = engine
        self.steps: list[dict] = []
        self._first_seed = 0

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        self._first_seed = len(self.engine.seeds)
        self._global_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ):
        scored = outputs["samples"]
        self.steps.append(
            {
                "global_rank": trainer.global_rank,
                "node_rank": trainer.node_rank,
                "num_nodes": trainer.num_nodes,
                "world_size": trainer.world_size,
                "data_parallel_size": pl_module.device_mesh["data_parallel"].size()
                if pl_module.device_mesh is not None
                else trainer.world_size,
                "global_step": self._global_step,
                "seeds": self.engine.seeds[self._first_seed :],
                "row_prompts": list(scored.prompts),
                "rewards": scored.total.clone(),
                "advantages": outputs["advantages"].clone(),
            }
        )


def train(
    strategy: str = "single",
    rollouts: int = 2,
    checkpoint_dir: str | None = None,
    resume_from: str | None = None,
    export: str | None = None,
    num_nodes: int = 1,
    recorder: list[dict] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """``rollouts`` training steps on the same global batches whatever the number of devices, then
    validation; returns the policy weights and the validation metrics.

    ``strategy``: "single" (one process), "ddp" or "fsdp2" (two processes: two devices of one node, or
    one device on each of ``num_nodes=2`` nodes). Optionally checkpoints after every rollout to
    ``checkpoint_dir``, resumes from ``resume_from``, exports the policy with ``save_pretrained`` to
    ``export``, and appends this rank's RolloutRecorder steps to ``recorder``.
    """
    torch.set_num_threads(1)
    devices = 1 if strategy == "single" else 2 // num_nodes
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    with torch.no_grad():  # make EOS likely: completion lengths then differ between prompts and ranks
        model.get_output_embeddings().weight[tok.eos_token_id] *= 40
    # Completions depend on the prompt only, so 1 and 2 devices sample the same ones.
    engine = RecordingEngine()
    module = make_module(tok, model=model, rollout_engine=engine, **SETTINGS)
    record = RolloutRecorder(engine)
    k = SETTINGS["num_iterations"]
    strategies = {
        "single": "auto",
        "ddp": "ddp",
        # FSDP2: GRPOModule.configure_model shards each decoder layer and the root over the mesh.
        "fsdp2": FSDP2Strategy(),  # the configs/trainer/fsdp.yaml strategy
    }
    checkpoints = (
        [ModelCheckpoint(checkpoint_dir, every_n_train_steps=k, save_top_k=-1)] if checkpoint_dir else []
    )
    trainer = make_trainer(
        max_steps=rollouts * k,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategies[strategy],
        use_distributed_sampler=False,
        limit_val_batches=1.0,
        callbacks=[*checkpoints, record],
        enable_checkpointing=bool(checkpoints),
    )
    dm = PromptsDataModule(tok, prompts=PROMPTS, batch_size=GLOBAL_PROMPTS // (devices * num_nodes))
    trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
    assert trainer.world_size == devices * num_nodes and trainer.global_step == rollouts * k
    if recorder is not None:
        recorder.extend(record.steps)
    (metrics,) = trainer.validate(module, datamodule=dm, verbose=False)
    if export is not None:
        module.save_pretrained(export)  # every rank calls it (FSDP2 gathers the shards); rank 0 writes
    return weights(module), metrics


if __name__ == "__main__":
    out, strategy = sys.argv[1], sys.argv[2]
    num_nodes = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    steps: list[dict] = []
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
        result = train(strategy, export=out + ".export", num_nodes=num_nodes, recorder=steps)
    rank = dist.get_rank()  # Lightning leaves the process group up after fit
    if num_nodes > 1:
        torch.save(steps, f"{out}.rank{rank}")
    if rank == 0:
        torch.save(result, out)
