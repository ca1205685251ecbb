"""GRPOModule: start-up checks, unusual batches, and export."""

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
)
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from grpo_lightning.module import GRPOModule


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_generations": 1}, "needs at least 2 per prompt"),
        ({"loss_type": "ppo"}, "loss_type='ppo' is not supported. Valid values: 'grpo', 'bnpo'"),
        ({"scale_rewards": "global"}, "scale_rewards='global'"),
        ({"importance_sampling_level": "seq"}, "importance_sampling_level='seq'"),
        ({"sync_ref_model": True}, "set beta > 0 or sync_ref_model=False"),
        ({"sync_ref_model": True, "beta": 0.1, "lora": {"r": 4}}, "Drop lora or set sync_ref_model=False"),
        ({"top_entropy_quantile": 0.0}, "top_entropy_quantile=0.0 must be in"),
        ({"temperature": 0.0}, "temperature=0.0 must be > 0"),
        ({"delta": 1.1}, "delta=1.1 must exceed"),
        ({"micro_batch_size": 0}, "micro_batch_size=0 must be >= 1"),
        ({"reward_funcs": None}, "reward_funcs is required"),
        ({"reward_weights": [1.0, 2.0]}, "reward_weights has 2 entries"),
    ],
)
def test_invalid_settings_fail_at_construction_naming_the_setting(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_module(**settings)


def test_settings_that_do_not_divide_fail_at_the_first_step_with_the_fix():
    tok = tiny_tokenizer()
    trainer = make_trainer(max_steps=1)
    with pytest.raises(
        ValueError, match=r"micro_batch_size=3 does not divide the mini-batch of 8 .* one of \[1, 2, 4, 8\]"
    ):
        trainer.fit(make_module(tok, micro_batch_size=3), datamodule=PromptsDataModule(tok))
    with pytest.raises(ValueError, match="steps_per_rollout=3 does not divide the 8 completions"):
        trainer.fit(make_module(tok, steps_per_rollout=3), datamodule=PromptsDataModule(tok))


def test_a_prompt_longer_than_the_context_is_a_clear_error():
    tok = tiny_tokenizer()
    trainer = make_trainer(max_steps=1)
    dm = PromptsDataModule(tok, prompts=["1" * 125 + "=", "2+2="])
    # This data module does not report its longest prompt, so the batch check catches it.
    with pytest.raises(ValueError, match=r"\(in this batch\) has 126 tokens; .* but the model's context is 128"):
        trainer.fit(make_module(tok), datamodule=dm)


class TextOnly(LightningDataModule):
    """Batches with prompt texts and columns only: the module tokenizes them."""

    def train_dataloader(self) -> DataLoader:
        rows = [{"prompt": p, "answer": "2"} for p in ["1+1=", "0+2=", "3-1=", "4-2="]]
        return DataLoader(rows, batch_size=2, collate_fn=lambda b: {k: [r[k] for r in b] for k in b[0]})


def test_batches_without_input_ids_are_tokenized_with_the_module_tokenizer():
    trainer = make_trainer(max_steps=2)
    module = make_module()
    trainer.fit(module, datamodule=TextOnly())
    assert trainer.global_step == 2


def test_right_padded_prompts_give_the_same_completions_as_left_padded_ones():
    tok = tiny_tokenizer()
    tok.padding_side = "right"
    batch = PromptsDataModule(tok)._collate(["1+1=", "12+30="])
    assert batch["attention_mask"][0, -1] == 0  # right-padded on purpose
    module = make_module(tiny_tokenizer())
    module.configure_model()
    scored = module.sampler.sample(batch, 0, num_generations=2, sampling=module.greedy, scorer=module.scorer)
    left = PromptsDataModule(tiny_tokenizer())._collate(["1+1=", "12+30="])
    expected = module.sampler.sample(left, 0, num_generations=2, sampling=module.greedy, scorer=module.scorer)
    assert scored.completions == expected.completions


def code_sum_unless_flat(prompts, completions, **kw):
    """Constant for prompts starting with "F", varying for the others."""
    return [
        0.0 if p.startswith("F") else float(sum(map(ord, c)))
        for p, c in zip(prompts, completions, strict=True)
    ]


def test_save_pretrained_exports_policy_and_tokenizer(tmp_path):
    tok = tiny_tokenizer()
    module = make_module(tok)
    make_trainer(max_steps=1).fit(module, datamodule=PromptsDataModule(tok))
    path = module.save_pretrained(str(tmp_path / "out"))
    loaded = AutoModelForCausalLM.from_pretrained(path)
    x = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(loaded(x).logits, module.policy(x).logits)
    reloaded = GRPOModule(path, reward_funcs=[code_sum_unless_flat])  # tokenizer found next to the model
    assert reloaded.tokenizer.pad_token_id == tok.pad_token_id and reloaded.tokenizer.padding_side == "left"


def test_a_model_loaded_by_path_trains_in_train_mode_with_checkpointing(tmp_path):
    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    module = GRPOModule(str(tmp_path), reward_funcs=[code_sum_unless_flat], gradient_checkpointing=True)
    module.configure_model()
    assert module.policy.training  # from_pretrained returns eval mode, where HF skips checkpointing
    assert module.policy.is_activation_checkpointing
    policy = module.policy
    module.configure_model()  # idempotent: nothing is rebuilt or wrapped twice
    assert module.policy is policy
