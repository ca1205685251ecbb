"""Validation before training: the sanity check's metrics reach the loggers as the step-0 point."""

from __future__ import annotations

import csv
import glob

from helpers import (
    PromptsDataModule,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_tokenizer,
)
from lightning.pytorch.loggers import CSVLogger


def val_rows(tmp_path, num_sanity_val_steps: int) -> list[dict[str, str]]:
    tok = tiny_tokenizer()
    module = make_module(tok, val_num_samples=2)
    trainer = make_trainer(
        max_steps=2,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        num_sanity_val_steps=num_sanity_val_steps,
        limit_val_batches=None,
        val_check_interval=2,
    )
    trainer.fit(module, datamodule=PromptsDataModule(tok, batch_size=2, val_prompts=["1+1=", "2+3=", "7-4="]))
    (path,) = glob.glob(str(tmp_path / "lightning_logs" / "version_*" / "metrics.csv"))
    with open(path) as f:
        return [r for r in csv.DictReader(f) if r.get("val/accuracy")]


def test_the_sanity_check_is_logged_at_step_0_then_validation_as_usual(tmp_path, capsys):
    rows = val_rows(tmp_path, num_sanity_val_steps=-1)
    # before training, then the validation after optimizer step 2, logged at that step
    assert [int(r["step"]) for r in rows] == [0, 2]
    for row in rows:
        assert 0.0 <= float(row["val/accuracy"]) <= 1.0
        assert row["val/pass@2"] and float(row["val/completions/mean_length"]) > 0
    assert "Validation before training (step 0): val/accuracy=" in capsys.readouterr().out


def test_no_sanity_check_no_step_0_point(tmp_path):
    rows = val_rows(tmp_path, num_sanity_val_steps=0)
    assert [int(r["step"]) for r in rows] == [2]


def test_a_partial_sanity_check_is_not_logged_as_the_starting_accuracy(tmp_path, capsys):
    # 3 validation prompts in batches of 2: a sanity check of 1 batch sees 2 of them, not the set.
    rows = val_rows(tmp_path, num_sanity_val_steps=1)
    assert [int(r["step"]) for r in rows] == [2]
    assert "Sanity check on 1 of 2 validation batches (not logged" in capsys.readouterr().out
