"""Learning from scratch: a random tiny model must raise a simple learnable reward far above chance.

The reward is the share of completion tokens equal to "7" (chance: about 1 in 98 characters). Each
setting runs 30 rollouts of 4 prompts x 8 completions of 8 tokens on CPU.
"""

from __future__ import annotations

import time

import pytest
from helpers import (
    PromptsDataModule,
    TokenShare,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_model,
    tiny_tokenizer,
)
from lightning.pytorch import Callback

ROLLOUTS = 30
LORA_TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj", "lm_head"]
SETTINGS = {
    "dapo": {},
    "beta": {"beta": 0.04},
    "num_iterations_2": {"num_iterations": 2},
    "gspo": {"importance_sampling_level": "sequence", "loss_type": "grpo"},
    # LoRA must reach the output layer: the random model's tiny logits cannot be moved far otherwise.
    "lora": {"lora": {"r": 8, "lora_alpha": 16, "target_modules": LORA_TARGETS}, "learning_rate": 5e-2},
}


class RewardTrace(Callback):
    def __init__(self) -> None:
        self.rewards: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rewards.append(float(trainer.callback_metrics["train/reward"]))


@pytest.mark.parametrize("name", list(SETTINGS))
def test_tiny_model_learns_a_simple_reward(name):
    settings = {"learning_rate": 1e-2, **SETTINGS[name]}
    tok = tiny_tokenizer()
    model = tiny_model(tok, tied=False) if "lora" in settings else tiny_model(tok)
    module = make_module(tok, model=model, reward_funcs=[TokenShare("7")], num_generations=8, **settings)
    trace = RewardTrace()
    k = module.hparams.num_iterations * module.hparams.steps_per_rollout
    trainer = make_trainer(max_steps=ROLLOUTS * k, callbacks=[trace])
    start = time.perf_counter()
    trainer.fit(module, datamodule=PromptsDataModule(tok, batch_size=4))
    seconds = (time.perf_counter() - start) / len(trace.rewards)
    first, last = sum(trace.rewards[:3]) / 3, sum(trace.rewards[-3:]) / 3
    print(
        f"\n{name}: reward {first:.3f} -> {last:.3f} in {len(trace.rewards)} rollouts, {seconds:.3f} s/rollout"
    )
    chance = 1 / 98
    assert first < 5 * chance  # the random model is at chance level...
    assert last > 0.3 and last > 10 * first  # ...and ends far above it
