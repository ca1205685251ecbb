"""A tied LM head adds its weight gradient straight into ``.grad`` across micro-batches: same
gradients as plain autograd, the parameter's accumulation hook fires once per backward with the
whole gradient (what DDP's all-reduce relies on), and one [V, H] buffer less in the backward."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import PeakMemory
from torch.testing import assert_close

from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model
from grpo_lightning.logprobs import sequence_logprobs

VOCAB, HIDDEN, K = 4096, 32, 5


def _model(tied: bool) -> torch.nn.Module:
    model = build_tiny_model(
        build_char_tokenizer(), arch="llama", hidden_size=HIDDEN, vocab_size=VOCAB, tie_word_embeddings=tied
    )
    return model.eval()  # no dropout: both paths see the same function


def _micro_batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Three micro-batches of (input_ids [2, 9], attention_mask, per-token loss weights [2, K])."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(3):
        ids = torch.randint(0, VOCAB, (2, 4 + K), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 0] = 0  # a left-padded row
        out.append((ids, mask, torch.randn(2, K, generator=g)))
    return out


def _accumulate(model: torch.nn.Module, fused: bool) -> list[int]:
    """Backward each micro-batch into ``.grad``; returns how often the head weight's accumulation
    hook fired per backward, and checks that each firing saw the gradient summed so far."""
    fired: list[int] = []
    weight = model.get_output_embeddings().weight
    weight.register_post_accumulate_grad_hook(lambda p: fired.__setitem__(-1, fired[-1] + 1))
    for ids, mask, w in _micro_batches():
        fired.append(0)
        if fused:
            logp, _ = sequence_logprobs(
                model, ids, mask, K, with_entropy=True, entropy_grad=False, backward_into_grad=True
            )
        else:  # the plain path: full logits, autograd for everything
            logp, _ = sequence_logprobs(model, ids, mask, K, from_hidden=False)
        (logp * w).sum().backward()
    return fired


@pytest.mark.parametrize("tied", [True, False])
def test_gradients_equal_plain_autograd_over_micro_batches(tied: bool) -> None:
    model = _model(tied)
    plain = copy.deepcopy(model)
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) is tied
    assert _accumulate(model, fused=True) == [1, 1, 1]
    assert _accumulate(plain, fused=False) == [1, 1, 1]
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_the_hook_sees_the_whole_gradient_of_the_backward() -> None:
    # DDP reads .grad when the parameter's hook fires: by then the head's share must be in it.
    model, plain = _model(True), None
    plain = copy.deepcopy(model)
    seen: list[torch.Tensor] = []
    model.get_input_embeddings().weight.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.clone()))
    expected: list[torch.Tensor] = []
    for ids, mask, w in _micro_batches():
        logp, _ = sequence_logprobs(model, ids, mask, K, with_entropy=True, entropy_grad=False, backward_into_grad=True)
        (logp * w).sum().backward()
        ref, _ = sequence_logprobs(plain, ids, mask, K, from_hidden=False)
        (ref * w).sum().backward()
        expected.append(plain.get_input_embeddings().weight.grad.clone())
    assert len(seen) == 3
    for got, want in zip(seen, expected, strict=True):
        assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_one_vocabulary_sized_buffer_less_in_the_backward() -> None:
    peaks = {}
    for into_grad in (True, False):
        model = _model(True)
        (ids, mask, w), *_ = _micro_batches()
        logp, _ = sequence_logprobs(model, ids, mask, K, with_entropy=True, entropy_grad=False)
        (logp * w).sum().backward()  # the first micro-batch: .grad now exists
        logp, _ = sequence_logprobs(
            model, ids, mask, K, with_entropy=True, entropy_grad=False, backward_into_grad=into_grad
        )
        with PeakMemory() as peaks[into_grad]:
            (logp * w).sum().backward()
    # Without it the head's [V, H] gradient waits for the embedding's, then both are summed.
    assert peaks[False].peak - peaks[True].peak >= VOCAB * HIDDEN * 4
