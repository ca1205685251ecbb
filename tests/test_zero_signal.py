"""Steps where every group scored the same leave the weights bit-identical, with beta > 0 too."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    PromptsDataModule,
    char_code_mean,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_tokenizer,
    weights,
)
from lightning.pytorch.loggers import CSVLogger


def constant(prompts, completions, **columns):
    return [1.2] * len(completions)  # not exactly representable in float32


def test_constant_rewards_with_beta_leave_the_weights_bit_identical(tmp_path):
    tok = tiny_tokenizer()
    module = make_module(tok, reward_funcs=[constant], beta=0.1, num_iterations=2, steps_per_rollout=2)
    start = weights(module)
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(max_steps=8, logger=logger, log_every_n_steps=1)
    with pytest.warns(
        UserWarning, match="no learning signal: every completion scored the same total reward, 1.2"
    ):
        trainer.fit(module, datamodule=PromptsDataModule(tok))
    assert trainer.global_step == 8  # the skipped steps still count
    for key, value in weights(module).items():
        assert torch.equal(value, start[key]), key
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 8
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    header, *rows = metrics.strip().splitlines()
    column = header.split(",").index("train/skipped_zero_advantage")
    assert [float(r.split(",")[column]) for r in rows] == [1.0, 1.0]


def test_steps_with_a_signal_still_train(tmp_path):
    tok = tiny_tokenizer()
    module = make_module(tok, reward_funcs=[char_code_mean], beta=0.1)
    start = weights(module)
    make_trainer(max_steps=1).fit(module, datamodule=PromptsDataModule(tok))
    assert any(not torch.equal(v, start[k]) for k, v in weights(module).items())


def test_dynamic_sampling_with_a_constant_reward_says_the_refills_found_nothing():
    tok = tiny_tokenizer()
    module = make_module(tok, reward_funcs=[constant], dynamic_sampling=True, max_dynamic_sampling_rounds=1)
    with pytest.warns(UserWarning, match="even after 1 dynamic-sampling refill rounds"):
        make_trainer(max_steps=1).fit(module, datamodule=PromptsDataModule(tok))
