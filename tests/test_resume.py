"""Checkpoints: a run resumed from step k ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    PromptsDataModule,
    char_code_mean,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_model,
    tiny_tokenizer,
    weights,
)
from lightning.pytorch.callbacks import ModelCheckpoint

from grpo_lightning.module import GRPOModule


def flat_for_differences(prompts, completions, **columns):
    """No signal for "a-b=" prompts (one per batch after the first), a dense reward for the others."""
    dense = char_code_mean(prompts, completions)
    return [0.0 if "-" in p else r for p, r in zip(prompts, dense, strict=True)]


SETTINGS = {
    # K = 4 optimizer steps per training step: shuffled mini-batches, pi_old, a reference model.
    "plain": {"num_iterations": 2, "steps_per_rollout": 2, "beta": 0.1, "micro_batch_size": 2},
    "ref_sync": {
        "beta": 0.1,
        "sync_ref_model": True,
        "ref_model_sync_steps": 2,
        "ref_model_mixup_alpha": 0.5,
    },
    # Refill rounds drawn from the training set: the same prompts after a resume.
    "dynamic": {"beta": 0.1, "dynamic_sampling": True, "reward_funcs": [flat_for_differences]},
}


def _fit(tmp_path, settings, max_steps, ckpt_path=None, every=None):
    tok = tiny_tokenizer()
    module = make_module(tok, **settings)
    callbacks = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1)] if every else []
    trainer = make_trainer(max_steps=max_steps, callbacks=callbacks, enable_checkpointing=bool(every))
    # 8 prompts, 2 per batch: 4 training steps per epoch, so the checkpoint after step 2 is mid-epoch.
    trainer.fit(module, datamodule=PromptsDataModule(tok, batch_size=2), ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.parametrize("name", list(SETTINGS))
def test_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path, name):
    settings = SETTINGS[name]
    k = settings.get("num_iterations", 1) * settings.get("steps_per_rollout", 1)
    full, _ = _fit(tmp_path, settings, max_steps=6 * k, every=2 * k)  # checkpoints at steps 2 and 4
    checkpoint = tmp_path / f"epoch=0-step={2 * k}.ckpt"
    assert checkpoint.exists()
    resumed, trainer = _fit(tmp_path / "resumed", settings, max_steps=6 * k, ckpt_path=str(checkpoint))
    assert trainer.global_step == 6 * k
    expected = weights(full)
    for key, value in weights(resumed).items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    for key, value in resumed.ref_model.state_dict().items():
        torch.testing.assert_close(value, full.ref_model.state_dict()[key], rtol=0, atol=0)


def test_frozen_reference_is_left_out_of_checkpoints_unless_it_is_synced(tmp_path):
    for name, has_ref in (("plain", False), ("ref_sync", True)):
        _, trainer = _fit(tmp_path / name, SETTINGS[name], max_steps=1)
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt")
        state = torch.load(tmp_path / f"{name}.ckpt", weights_only=False)["state_dict"]
        assert any(k.startswith("policy.") for k in state)
        assert any(k.startswith("ref_model.") for k in state) == has_ref


def test_a_checkpoint_of_another_configuration_is_refused_clearly(tmp_path):
    _, trainer = _fit(tmp_path, {"lora": {"r": 4}}, max_steps=1)
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    with pytest.raises(ValueError, match="another model configuration"):
        _fit(tmp_path / "other", {}, max_steps=2, ckpt_path=str(tmp_path / "lora.ckpt"))


def test_load_from_checkpoint_rebuilds_a_module_saved_with_plain_settings(tmp_path):
    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    # Everything by name (a path, registered rewards): the hyper-parameters alone rebuild the module.
    module = GRPOModule(
        str(tmp_path / "base"), reward_funcs=["format_reward"], num_generations=4, max_completion_length=8,
        beta=0.1, learning_rate=1e-2, warmup_steps=0,
    )  # fmt: skip
    trainer = make_trainer(max_steps=1)
    trainer.fit(module, datamodule=PromptsDataModule(tok))
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    loaded = GRPOModule.load_from_checkpoint(tmp_path / "run.ckpt")
    assert loaded.hparams.beta == 0.1 and loaded.scorer.names == ["format_reward"]
    for key, value in weights(module).items():
        torch.testing.assert_close(weights(loaded)[key], value, rtol=0, atol=0)
    for key, value in module.ref_model.state_dict().items():  # rebuilt from the path: the start weights
        torch.testing.assert_close(loaded.ref_model.state_dict()[key], value, rtol=0, atol=0)
