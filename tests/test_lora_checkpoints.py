"""Checkpoints leave out what the model rebuilds: a LoRA run's checkpoint holds the adapter, not the
frozen base, and still resumes exactly; weights rebuilt from another model than the run's are refused."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    PromptsDataModule,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_model,
    tiny_tokenizer,
    weights,
)
from lightning.pytorch.callbacks import ModelCheckpoint

from grpo_lightning.hf.model_setup import REBUILT_KEY

LORA = {"lora": {"r": 4}, "learning_rate": 1e-2}


def _fit(tmp_path, settings, max_steps, ckpt_path=None, every=None, model_seed=0):
    tok = tiny_tokenizer()
    module = make_module(tok, model=tiny_model(tok, seed=model_seed), **settings)
    callbacks = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1)] if every else []
    trainer = make_trainer(max_steps=max_steps, callbacks=callbacks, enable_checkpointing=bool(every))
    trainer.fit(module, datamodule=PromptsDataModule(tok, batch_size=2), ckpt_path=ckpt_path)
    return module, trainer


def test_a_lora_checkpoint_holds_the_adapter_only_and_resumes_exactly(tmp_path):
    full, _ = _fit(tmp_path, LORA, max_steps=4, every=2)
    checkpoint = tmp_path / "epoch=0-step=2.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    trainable = {"policy." + n for n, p in full.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    assert set(saved["state_dict"]) == trainable  # no frozen base weight
    assert len(saved[REBUILT_KEY]) == len(full.policy.state_dict()) - len(trainable)
    resumed, trainer = _fit(tmp_path / "resumed", LORA, max_steps=4, ckpt_path=str(checkpoint))
    assert trainer.global_step == 4
    expected = weights(full)
    assert set(weights(resumed)) == set(expected)
    for key, value in weights(resumed).items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


@pytest.mark.parametrize("settings", [LORA, {"beta": 0.1}], ids=["lora-base", "reference"])
def test_weights_rebuilt_from_another_model_are_refused(tmp_path, settings):
    _, trainer = _fit(tmp_path, settings, max_steps=1)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    with pytest.raises(ValueError, match=r"trained from other weights than the model .* gives now"):
        _fit(tmp_path / "other", settings, max_steps=2, ckpt_path=str(tmp_path / "run.ckpt"), model_seed=1)


def test_a_checkpoint_without_the_record_still_rebuilds_its_reference(tmp_path):
    # Written before checkpoints recorded what they left out: the frozen reference is simply absent.
    full, trainer = _fit(tmp_path, {"beta": 0.1}, max_steps=1)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    saved = torch.load(tmp_path / "run.ckpt", weights_only=False)
    assert not any(k.startswith("ref_model.") for k in saved["state_dict"])
    del saved[REBUILT_KEY]
    torch.save(saved, tmp_path / "old.ckpt")
    resumed, _ = _fit(tmp_path / "resumed", {"beta": 0.1}, max_steps=2, ckpt_path=str(tmp_path / "old.ckpt"))
    for key, value in full.ref_model.state_dict().items():
        torch.testing.assert_close(resumed.ref_model.state_dict()[key], value, rtol=0, atol=0)
