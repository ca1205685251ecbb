"""A whole training step never holds full-vocabulary logits of every row at every position at once."""

from __future__ import annotations

import pytest
import torch
from helpers import PromptsDataModule, make_module, make_trainer, one_thread, tiny_tokenizer  # noqa: F401
from torch.utils._python_dispatch import TorchDispatchMode

from grpo_lightning.hf.tiny import build_tiny_model

VOCAB, HIDDEN, CHUNK = 4096, 16, 4


class VocabRows(TorchDispatchMode):
    """The most rows (numel / V) of any new tensor (not a view of an input) with a last dimension
    of V made by any operation, forward or backward."""

    def __init__(self) -> None:
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in inputs:
                continue
            if t.dim() >= 2 and t.shape[-1] == VOCAB:
                self.most = max(self.most, t.numel() // VOCAB)
        return out


@pytest.mark.parametrize("rollout_engine", ["fast", "hf"])
def test_a_step_makes_vocabulary_rows_for_one_position_per_row_or_one_chunk(rollout_engine):
    """2 prompts x 4 completions = 8 rows of up to 8 completion tokens: sampling makes [8, V] logits
    per position and the log-prob passes [4, V] chunks; [8 x 8, V] would be the whole batch."""
    tok = tiny_tokenizer()
    model = build_tiny_model(tok, hidden_size=HIDDEN, num_layers=1, vocab_size=VOCAB)
    module = make_module(
        tok, model=model, beta=0.1, max_completion_length=8, logprob_chunk_size=CHUNK,
        rollout_engine=rollout_engine,
    )  # fmt: skip
    rows = VocabRows()
    with rows:
        make_trainer(max_steps=1).fit(module, datamodule=PromptsDataModule(tok, batch_size=2))
    assert module.trainer.global_step == 1  # the step ran its update (beta > 0: every row learns)
    assert 0 < rows.most <= 8
