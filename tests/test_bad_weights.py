"""A policy with NaN/inf weights fails with an error naming the cause, in every engine."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    PromptsDataModule,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_tokenizer,
)

from grpo_lightning.rollout.engines.sampling import sample_categorical


@pytest.mark.parametrize("engine", ["auto", "hf"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_named_while_sampling(engine, value):
    tok = tiny_tokenizer()
    module = make_module(tok, rollout_engine=engine)
    with torch.no_grad():
        module.policy.lm_head.weight[3, 0] = value  # tied: the embedding holds it too
    with pytest.raises(
        FloatingPointError, match=r"NaN/inf logits while sampling: 1 weight tensors hold NaN/inf"
    ):
        make_trainer(max_steps=1).fit(module, datamodule=PromptsDataModule(tok))


def test_a_nan_row_still_gives_a_valid_token_id():
    probs = torch.rand(3, 2000)
    probs[1] = float("nan")
    ids = sample_categorical(probs)
    assert ids.max() < 2000 and ids.min() >= 0
