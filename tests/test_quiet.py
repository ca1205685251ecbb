"""Messages the user cannot act on are silenced at their source, one by one; the rest still print."""

from __future__ import annotations

import logging

import pytest
from helpers import PromptsDataModule, make_module, make_trainer, one_thread, tiny_model, tiny_tokenizer  # noqa: F401
from transformers import AutoModelForCausalLM

from grpo_lightning._quiet import quiet_known_noise


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def records_of():
    added = []

    def attach(name: str) -> list[str]:
        handler = Records()
        logging.getLogger(name).addHandler(handler)
        added.append((name, handler))
        return handler.messages

    yield attach
    for name, handler in added:
        logging.getLogger(name).removeHandler(handler)


@pytest.mark.parametrize(
    ("logger", "noise", "kept"),
    [
        # RunGuard has already said what it does on SIGTERM (finish the step, save, stop).
        (
            "lightning.pytorch.trainer.connectors.signal_connector",
            "[rank: 0] Received SIGTERM: 15",
            "Requeued SLURM job: 7",
        ),
        (
            "lightning.pytorch.trainer.connectors.checkpoint_connector",
            "`weights_only` was not set, defaulting to `False`.",
            "Restoring states from the checkpoint path at x.ckpt",
        ),
    ],
)
def test_lightning_notices_are_dropped_one_message_at_a_time(records_of, logger, noise, kept):
    quiet_known_noise()
    seen = records_of(logger)
    logging.getLogger(logger).info(noise)
    logging.getLogger(logger).info(kept)
    assert seen == [kept]


def test_a_second_evaluation_with_the_same_trainer_does_not_announce_the_module_callbacks(records_of):
    seen = records_of("lightning.pytorch.utilities.rank_zero")
    tok = tiny_tokenizer()
    module, data = make_module(tok), PromptsDataModule(tok)
    trainer = make_trainer(limit_val_batches=1)
    trainer.validate(module, datamodule=data, verbose=False)
    trainer.validate(module, datamodule=data, verbose=False)  # replaces the module's callbacks of the first
    assert [m for m in seen if "configure_callbacks" in m] == []


def test_a_user_callback_that_gets_replaced_is_still_announced(records_of):
    quiet_known_noise()
    seen = records_of("lightning.pytorch.utilities.rank_zero")
    message = (
        "The following callbacks returned in `LightningModule.configure_callbacks` will override existing "
        "callbacks passed to Trainer: EarlyStopping, StartChecks"
    )
    logging.getLogger("lightning.pytorch.utilities.rank_zero").info(message)
    assert seen == [message]


def test_loading_and_saving_weights_show_no_bars(tmp_path, capfd):
    quiet_known_noise()
    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(tmp_path / "m")
    AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "Loading weights" not in err


def test_other_transformers_bars_still_show(capfd):
    from transformers.utils import logging as hf_logging

    quiet_known_noise()
    for _ in hf_logging.tqdm(range(3), desc="Downloading shards"):
        pass
    assert "Downloading shards" in capfd.readouterr().err


def test_the_cli_model_summary_has_no_flops_column_or_total(records_of, capsys):
    from lightning.pytorch.callbacks import ModelSummary

    from grpo_lightning.cli.app import main

    seen = records_of("lightning.pytorch.callbacks.model_summary")
    args = ["--model.model=builtin:tiny-math", "--model.reward_funcs=[gsm8k_accuracy]", "--trainer.accelerator=cpu"]
    trainer = main(args, run=False).trainer
    (summary,) = [c for c in trainer.callbacks if isinstance(c, ModelSummary)]
    summary.on_fit_start(trainer, make_module(tiny_tokenizer()))
    table = "\n".join(seen) + capsys.readouterr().out  # Lightning's rich summary prints, the plain one logs
    assert "Total params" in table and "Trainable params" in table
    assert "FLOPs" not in table and "Flops" not in table  # a GRPO module's FLOPs are never counted
