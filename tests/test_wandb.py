"""wandb, offline: a short run writes its files, every documented training metric, and a completions table."""

from __future__ import annotations

import glob

import pytest
from helpers import (
    PromptsDataModule,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_tokenizer,
)

wandb = pytest.importorskip("wandb")


def test_offline_wandb_run_writes_metrics_and_a_completion_table(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    tok = tiny_tokenizer()
    module = make_module(tok, log_completions_every_n_steps=1, num_completions_to_log=2)
    logger = WandbLogger(project="grpo-lightning-test", save_dir=str(tmp_path), offline=True)
    trainer = make_trainer(max_steps=2, logger=logger, log_every_n_steps=1)
    trainer.fit(module, datamodule=PromptsDataModule(tok))
    run = logger.experiment
    summary = dict(run.summary)
    wandb.finish()

    assert glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    for key in ("train/loss", "train/reward", "train/clip_ratio/region_mean", "perf/tokens_per_s", "train/lr"):
        assert key in summary, f"{key} missing from the wandb summary: {sorted(summary)}"
    table = summary["completions"]
    assert table["_type"] == "table-file" and table["nrows"] == 2
    assert glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files" / "media" / "table" / "completions_*.json"))
