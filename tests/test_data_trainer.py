"""PromptDataModule inside a Trainer: the module's tokenizer, per-rank sharding, exact mid-epoch resume."""

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _is_dataloader_shuffled, _update_dataloader
from torch.utils.data import BatchSampler, DataLoader

from grpo_lightning.data import PromptDataModule, ResumableDataLoader
from grpo_lightning.hf.tiny import build_char_tokenizer

SYNTHETIC = {"train_size": 24, "val_size": 6, "test_size": 0}


class Recorder(pl.LightningModule):
    """Records the questions of every batch it is given; the data module borrows its tokenizer."""

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer = build_char_tokenizer()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.train_questions: list[list[str]] = []
        self.val_questions: list[str] = []

    def training_step(self, batch, batch_idx):
        self.train_questions.append(list(batch["question"]))
        return (self.weight * batch["input_ids"].float().mean()).sum()

    def validation_step(self, batch, batch_idx):
        self.val_questions.extend(batch["question"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(tmp_path, max_steps, **kwargs):
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        **kwargs,
    )


def test_fit_takes_the_tokenizer_from_the_module_and_validates(tmp_path):
    module, dm = Recorder(), PromptDataModule(batch_size=4, synthetic=SYNTHETIC, prompt_template="{question}")
    trainer(tmp_path, max_steps=6, enable_checkpointing=False).fit(module, datamodule=dm)
    assert dm.tokenizer is module.tokenizer
    seen = [q for batch in module.train_questions for q in batch]
    assert len(seen) == 24 and sorted(seen) == sorted(dm.train_dataset["question"])  # one epoch, each once
    assert sorted(module.val_questions) == sorted(dm.val_dataset["question"])


def test_each_rank_gets_different_prompts_under_ddp():
    # What the Trainer does under DDP (data_connector._prepare_dataloader): capture the loader's
    # arguments, swap in a DistributedSampler, rebuild the loader. Done here for two ranks by hand.
    dm = PromptDataModule(
        tokenizer=build_char_tokenizer(), batch_size=4, synthetic={"train_size": 40, "val_size": 0}
    )
    dm.setup("fit")
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    assert _is_dataloader_shuffled(loader)
    per_rank = []
    for rank in (0, 1):
        sampler = _get_distributed_sampler(
            loader, shuffle=True, overfit_batches=0, mode=RunningStage.TRAINING, num_replicas=2, rank=rank
        )
        rank_loader = _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)
        assert isinstance(rank_loader, ResumableDataLoader) and rank_loader.drop_last
        batches = list(rank_loader)
        assert len(batches) == 5 and all(batch["input_ids"].shape[0] == 4 for batch in batches)
        per_rank.append([q for batch in batches for q in batch["question"]])
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(dm.train_dataset["question"])


def test_resuming_mid_epoch_replays_exactly_the_uninterrupted_prompts(tmp_path):
    # 24 prompts / 4 = 6 steps per epoch: step 8 is in the middle of the second epoch, step 12 ends the second.
    def data():
        return PromptDataModule(
            batch_size=4, synthetic=SYNTHETIC, prompt_template="{question}", val_fraction=0
        )

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    full = Recorder()
    trainer(tmp_path, max_steps=15, callbacks=[checkpoints], limit_val_batches=0).fit(full, datamodule=data())
    assert len(full.train_questions) == 15
    for step in (8, 12):  # mid-epoch, and exactly at the end of an epoch
        resumed = Recorder()
        checkpoint = next((tmp_path / "ckpt").glob(f"*step={step}.ckpt"))
        trainer(tmp_path, max_steps=15, limit_val_batches=0, enable_checkpointing=False).fit(
            resumed, datamodule=data(), ckpt_path=checkpoint
        )
        assert resumed.train_questions == full.train_questions[step:]
