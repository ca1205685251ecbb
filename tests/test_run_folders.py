"""A run that fails before its first step leaves no run folder behind that holds nothing but its
own set-up records; a folder with anything else, or one that existed before, is kept."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from helpers import one_thread, save_tiny_policy  # noqa: F401 (autouse fixture)
from lightning.pytorch.callbacks import ModelCheckpoint

from grpo_lightning.cli.app import main
from grpo_lightning.run.report import checkpoint_lines


def fit_args(tmp, logger: str, *extra: str) -> list[str]:
    policy = tmp / "policy"
    if not policy.exists():
        save_tiny_policy(policy)
    return [
        "fit",
        f"--model.model={policy}",
        "--model.reward_funcs=[gsm8k_accuracy]",
        "--model.num_generations=2",
        "--data.batch_size=2",
        "--data.synthetic={train_size: 8, val_size: 0, test_size: 0}",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger={logger}",
        f"--trainer.logger.init_args.save_dir={tmp / 'runs'}",
        *extra,
    ]


# The tiny model's context is 128 positions: 200 new tokens cannot fit, which the run finds when
# fit starts, before any step.
TOO_LONG = "--model.max_completion_length=200"


@pytest.mark.parametrize("logger", ["CSVLogger", "TensorBoardLogger"])
def test_a_run_that_fails_before_its_first_step_leaves_no_run_folder(tmp_path, logger):
    with pytest.raises(ValueError, match="context is 128"):
        main(fit_args(tmp_path, logger, TOO_LONG))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]  # runs/<name>/version_0 taken back


def test_a_run_folder_that_existed_or_holds_more_is_kept(tmp_path):
    mine = tmp_path / "runs" / "lightning_logs" / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's")
    with pytest.raises(ValueError, match="context is 128"):
        main(fit_args(tmp_path, "CSVLogger", TOO_LONG, "--trainer.logger.init_args.version=mine"))
    assert (mine / "notes.txt").read_text() == "the user's"
    # A run that failed in its first step keeps its folder (it ran).
    with pytest.raises(ValueError, match="micro_batch_size=3 does not divide"):
        main(fit_args(tmp_path, "CSVLogger", "--model.max_completion_length=6", "--model.micro_batch_size=3"))
    assert (tmp_path / "runs" / "lightning_logs" / "version_0" / "config.yaml").is_file()


def test_a_best_checkpoint_kept_from_the_resumed_run_says_so(tmp_path):
    """A resumed run restores the old run's best path; the end report must not pass it off as this run's."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "new" / "checkpoints", monitor="val/accuracy", mode="max")
    trainer = pl.Trainer(callbacks=[checkpoint], logger=False, enable_progress_bar=False)
    checkpoint.best_model_path = str(tmp_path / "old" / "checkpoints" / "epoch=0-step=4.ckpt")
    best = checkpoint_lines(trainer, None, str(tmp_path / "new"))["best checkpoint"]
    assert best == f"{checkpoint.best_model_path} (from the run this one resumed: this run saved no better one)"
    checkpoint.best_model_path = str(tmp_path / "new" / "checkpoints" / "epoch=0-step=8.ckpt")
    assert checkpoint_lines(trainer, None, str(tmp_path / "new"))["best checkpoint"] == checkpoint.best_model_path
